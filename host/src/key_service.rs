//! The `key-service` import, linked by hand.
//!
//! `bindgen!`'s generated host functions take `list<u8>` arguments as
//! `Vec<u8>`: the canonical ABI copies every record body out of the guest
//! into a fresh host allocation before the key store sees it, and the key
//! store then copies it again to make room for the tag (and, for TLS 1.2
//! AES-GCM, the explicit nonce). Taking the lists as [`WasmList`] instead
//! lets the key store read a payload or body where it lies in the guest's
//! linear memory and copy it once, into the buffer that goes back. The
//! functions and their results are the WIT's (`wit/key-service.wit`); only
//! how the arguments are read differs from the generated bindings.
//!
//! No guest code runs while the slices are borrowed, so the guest cannot
//! change them under the AEAD. Every call counts what it read and returned
//! ([`crate::HostKeyStore::traffic`]).

use keyferry_record::framing::count_records;
use keyferry_record::key_service::KeyService;
use keyferry_record::record::HEADER_LEN;
use keyferry_record::{KeyPosition, KeyServiceError};
use wasmtime::component::{Linker, WasmList};

use crate::bindings::keyferry::dataplane::key_service::KeyPosition as WitPosition;
use crate::bindings::keyferry::dataplane::types as wit;
use crate::sandbox::{HeldRecords, StoreState};

/// The interface's name in the component model.
const INTERFACE: &str = "keyferry:dataplane/key-service@0.1.0";

type Reply<T> = wasmtime::Result<(Result<T, wit::KeyServiceError>,)>;

/// Defines `seal-record`, `seal-payload`, `seal-held`, `open-record`,
/// `open-held` and `update` in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut instance = linker.instance(INTERFACE)?;
    instance.func_wrap(
        "seal-record",
        |cx, (at, aad, plaintext): (WitPosition, WasmList<u8>, WasmList<u8>)| -> Reply<Vec<u8>> {
            let state: &StoreState = cx.data();
            let (aad, plaintext) = (aad.as_le_slice(&cx), plaintext.as_le_slice(&cx));
            let sealed = state
                .keys
                .bound(state.id)
                .seal_record(at.into(), aad, plaintext);
            state.keys.count_traffic(
                aad.len() + plaintext.len(),
                sealed.as_ref().map_or(0, Vec::len),
            );
            Ok((sealed.map_err(Into::into),))
        },
    )?;
    instance.func_wrap(
        "seal-payload",
        |cx,
         (at, content_type, payload, padding): (
            WitPosition,
            wit::ContentType,
            WasmList<u8>,
            u16,
        )|
         -> Reply<Vec<u8>> {
            let state: &StoreState = cx.data();
            let payload = payload.as_le_slice(&cx);
            let sealed = state.keys.bound(state.id).seal_payload(
                at.into(),
                content_type.into(),
                payload,
                usize::from(padding),
            );
            state
                .keys
                .count_traffic(payload.len(), sealed.as_ref().map_or(0, Vec::len));
            Ok((sealed.map_err(Into::into),))
        },
    )?;
    instance.func_wrap(
        "seal-held",
        |mut cx,
         (at, content_type, payload, padding): (
            WitPosition,
            wit::ContentType,
            WasmList<u8>,
            u16,
        )|
         -> Reply<u32> {
            // Taken out while the payload is borrowed from guest memory,
            // and put back whatever happens.
            let mut sealed = std::mem::take(&mut cx.data_mut().held.sealed);
            let state: &StoreState = cx.data();
            let full = count_records(&sealed).is_none_or(|n| n >= HeldRecords::MAX_SEALED);
            let result = if full {
                Err(KeyServiceError::InvalidArgument)
            } else {
                let payload = payload.as_le_slice(&cx);
                let result = state.keys.seal_payload_into(
                    &mut sealed,
                    Some(state.id),
                    at.into(),
                    content_type.into(),
                    payload,
                    usize::from(padding),
                );
                state.keys.count_traffic(payload.len(), 0);
                result
            };
            let len = result.and_then(|len| {
                state.keys.count_held(len);
                u32::try_from(len).map_err(|_| KeyServiceError::InvalidArgument)
            });
            cx.data_mut().held.sealed = sealed;
            Ok((len.map_err(Into::into),))
        },
    )?;
    instance.func_wrap(
        "open-held",
        |mut cx, (at, aad): (WitPosition, WasmList<u8>)| -> Reply<Vec<u8>> {
            // Single use: a second open in the same call finds nothing.
            let record = cx.data_mut().held.to_open.take();
            let state: &StoreState = cx.data();
            let opened = match record.as_deref().and_then(|r| r.get(HEADER_LEN..)) {
                Some(body) => {
                    let aad = aad.as_le_slice(&cx);
                    let opened = state.keys.open_from(Some(state.id), at.into(), aad, body);
                    state.keys.count_held(body.len());
                    state
                        .keys
                        .count_traffic(aad.len(), opened.as_ref().map_or(0, Vec::len));
                    opened
                }
                None => Err(KeyServiceError::InvalidArgument),
            };
            Ok((opened.map_err(Into::into),))
        },
    )?;
    instance.func_wrap(
        "open-record",
        |cx, (at, aad, body): (WitPosition, WasmList<u8>, WasmList<u8>)| -> Reply<Vec<u8>> {
            let state: &StoreState = cx.data();
            let (aad, body) = (aad.as_le_slice(&cx), body.as_le_slice(&cx));
            let opened = state.keys.bound(state.id).open_record(at.into(), aad, body);
            state
                .keys
                .count_traffic(aad.len() + body.len(), opened.as_ref().map_or(0, Vec::len));
            Ok((opened.map_err(Into::into),))
        },
    )?;
    instance.func_wrap(
        "update",
        |cx, (key_ref, generation): (u64, u32)| -> Reply<()> {
            let state: &StoreState = cx.data();
            let updated = state.keys.bound(state.id).update(key_ref, generation);
            Ok((updated.map_err(Into::into),))
        },
    )?;
    Ok(())
}

impl From<WitPosition> for KeyPosition {
    fn from(at: WitPosition) -> Self {
        Self {
            key_ref: at.key_ref,
            generation: at.generation,
            sequence: at.sequence,
        }
    }
}
