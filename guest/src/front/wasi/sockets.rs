//! `wasi:sockets` for a served component: the interfaces, and no socket.
//! Every one of them mentions a `wasi:io` type, so the host's cannot be
//! linked to a tenant whose `wasi:io` is the front's (DESIGN section 9):
//! the front provides them, and creating a socket or resolving a name is
//! refused with `access-denied`. A component that imports sockets (std's
//! networking does) still loads; its only connection is the client's.

use alloc::string::String;
use alloc::vec::Vec;

use super::Front;
use crate::bindings::exports::wasi::io::{poll, streams};
use crate::bindings::exports::wasi::sockets::{
    instance_network, ip_name_lookup, network, tcp, tcp_create_socket, udp, udp_create_socket,
};

type E = network::ErrorCode;

/// The one network a component may name; nothing can be reached on it.
pub(crate) struct Network;

impl network::GuestNetwork for Network {}

impl network::Guest for Front {
    type Network = Network;
}

impl instance_network::Guest for Front {
    fn instance_network() -> network::Network {
        network::Network::new(Network)
    }
}

/// Name resolution: refused, so never made.
pub(crate) enum NoResolution {}

uninhabited!(ip_name_lookup::GuestResolveAddressStream => NoResolution {
    resolve_next_address() -> Result<Option<network::IpAddress>, E>;
    subscribe() -> poll::Pollable;
});

impl ip_name_lookup::Guest for Front {
    type ResolveAddressStream = NoResolution;

    fn resolve_addresses(
        _: network::NetworkBorrow<'_>,
        _: String,
    ) -> Result<ip_name_lookup::ResolveAddressStream, E> {
        Err(E::AccessDenied)
    }
}

/// A TCP socket: refused at creation, so never made.
pub(crate) enum NoTcp {}

uninhabited!(tcp::GuestTcpSocket => NoTcp {
    start_bind(n: network::NetworkBorrow<'_>, a: network::IpSocketAddress) -> Result<(), E>;
    finish_bind() -> Result<(), E>;
    start_connect(n: network::NetworkBorrow<'_>, a: network::IpSocketAddress) -> Result<(), E>;
    finish_connect() -> Result<(streams::InputStream, streams::OutputStream), E>;
    start_listen() -> Result<(), E>;
    finish_listen() -> Result<(), E>;
    accept() -> Result<(tcp::TcpSocket, streams::InputStream, streams::OutputStream), E>;
    local_address() -> Result<network::IpSocketAddress, E>;
    remote_address() -> Result<network::IpSocketAddress, E>;
    is_listening() -> bool;
    address_family() -> network::IpAddressFamily;
    set_listen_backlog_size(v: u64) -> Result<(), E>;
    keep_alive_enabled() -> Result<bool, E>;
    set_keep_alive_enabled(v: bool) -> Result<(), E>;
    keep_alive_idle_time() -> Result<u64, E>;
    set_keep_alive_idle_time(v: u64) -> Result<(), E>;
    keep_alive_interval() -> Result<u64, E>;
    set_keep_alive_interval(v: u64) -> Result<(), E>;
    keep_alive_count() -> Result<u32, E>;
    set_keep_alive_count(v: u32) -> Result<(), E>;
    hop_limit() -> Result<u8, E>;
    set_hop_limit(v: u8) -> Result<(), E>;
    receive_buffer_size() -> Result<u64, E>;
    set_receive_buffer_size(v: u64) -> Result<(), E>;
    send_buffer_size() -> Result<u64, E>;
    set_send_buffer_size(v: u64) -> Result<(), E>;
    subscribe() -> poll::Pollable;
    shutdown(t: tcp::ShutdownType) -> Result<(), E>;
});

impl tcp::Guest for Front {
    type TcpSocket = NoTcp;
}

impl tcp_create_socket::Guest for Front {
    fn create_tcp_socket(_: network::IpAddressFamily) -> Result<tcp::TcpSocket, E> {
        Err(E::AccessDenied)
    }
}

/// A UDP socket and its streams: refused at creation, so never made.
pub(crate) enum NoUdp {}

uninhabited!(udp::GuestUdpSocket => NoUdp {
    start_bind(n: network::NetworkBorrow<'_>, a: network::IpSocketAddress) -> Result<(), E>;
    finish_bind() -> Result<(), E>;
    stream(a: Option<network::IpSocketAddress>) -> Result<(udp::IncomingDatagramStream, udp::OutgoingDatagramStream), E>;
    local_address() -> Result<network::IpSocketAddress, E>;
    remote_address() -> Result<network::IpSocketAddress, E>;
    address_family() -> network::IpAddressFamily;
    unicast_hop_limit() -> Result<u8, E>;
    set_unicast_hop_limit(v: u8) -> Result<(), E>;
    receive_buffer_size() -> Result<u64, E>;
    set_receive_buffer_size(v: u64) -> Result<(), E>;
    send_buffer_size() -> Result<u64, E>;
    set_send_buffer_size(v: u64) -> Result<(), E>;
    subscribe() -> poll::Pollable;
});

uninhabited!(udp::GuestIncomingDatagramStream => NoUdp {
    receive(max: u64) -> Result<Vec<udp::IncomingDatagram>, E>;
    subscribe() -> poll::Pollable;
});

uninhabited!(udp::GuestOutgoingDatagramStream => NoUdp {
    check_send() -> Result<u64, E>;
    send(d: Vec<udp::OutgoingDatagram>) -> Result<u64, E>;
    subscribe() -> poll::Pollable;
});

impl udp::Guest for Front {
    type UdpSocket = NoUdp;
    type IncomingDatagramStream = NoUdp;
    type OutgoingDatagramStream = NoUdp;
}

impl udp_create_socket::Guest for Front {
    fn create_udp_socket(_: network::IpAddressFamily) -> Result<udp::UdpSocket, E> {
        Err(E::AccessDenied)
    }
}
