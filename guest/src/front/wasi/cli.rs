//! The monotonic clock, stdio, and a filesystem with no directories.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::bindings::exports::wasi::cli::{stderr, stdin, stdout};
use crate::bindings::exports::wasi::clocks::monotonic_clock;
use crate::bindings::exports::wasi::filesystem::{preopens, types as fs};
use crate::bindings::exports::wasi::io::{error as ioerror, poll, streams};
use crate::bindings::keyferry::dataplane::transport as host;

use super::Front;
use super::io::{InputStream, OutputStream, Pollable};

// ---- wasi:clocks/monotonic-clock and wasi:cli stdio ------------------------

impl monotonic_clock::Guest for Front {
    fn now() -> u64 {
        host::now()
    }

    fn resolution() -> u64 {
        1
    }

    fn subscribe_instant(when: u64) -> poll::Pollable {
        poll::Pollable::new(Pollable::Timer(when))
    }

    fn subscribe_duration(when: u64) -> poll::Pollable {
        poll::Pollable::new(Pollable::Timer(host::now().saturating_add(when)))
    }
}

impl stdin::Guest for Front {
    fn get_stdin() -> streams::InputStream {
        streams::InputStream::new(InputStream::Empty)
    }
}

impl stdout::Guest for Front {
    fn get_stdout() -> streams::OutputStream {
        streams::OutputStream::new(OutputStream::Log(host::Output::Stdout, RefCell::default()))
    }
}

impl stderr::Guest for Front {
    fn get_stderr() -> streams::OutputStream {
        streams::OutputStream::new(OutputStream::Log(host::Output::Stderr, RefCell::default()))
    }
}

// ---- wasi:filesystem: no directories ---------------------------------------

/// A served component gets no directories, so no descriptor ever exists:
/// opening a file fails as it does for a path outside every preopen.
pub(crate) enum NoDescriptor {}

uninhabited!(fs::GuestDescriptor => NoDescriptor {
    read_via_stream(offset: fs::Filesize) -> Result<streams::InputStream, fs::ErrorCode>;
    write_via_stream(offset: fs::Filesize) -> Result<streams::OutputStream, fs::ErrorCode>;
    append_via_stream() -> Result<streams::OutputStream, fs::ErrorCode>;
    advise(offset: fs::Filesize, length: fs::Filesize, advice: fs::Advice) -> Result<(), fs::ErrorCode>;
    sync_data() -> Result<(), fs::ErrorCode>;
    get_flags() -> Result<fs::DescriptorFlags, fs::ErrorCode>;
    get_type() -> Result<fs::DescriptorType, fs::ErrorCode>;
    set_size(size: fs::Filesize) -> Result<(), fs::ErrorCode>;
    set_times(a: fs::NewTimestamp, m: fs::NewTimestamp) -> Result<(), fs::ErrorCode>;
    read(length: fs::Filesize, offset: fs::Filesize) -> Result<(Vec<u8>, bool), fs::ErrorCode>;
    write(buffer: Vec<u8>, offset: fs::Filesize) -> Result<fs::Filesize, fs::ErrorCode>;
    read_directory() -> Result<fs::DirectoryEntryStream, fs::ErrorCode>;
    sync() -> Result<(), fs::ErrorCode>;
    create_directory_at(path: String) -> Result<(), fs::ErrorCode>;
    stat() -> Result<fs::DescriptorStat, fs::ErrorCode>;
    stat_at(flags: fs::PathFlags, path: String) -> Result<fs::DescriptorStat, fs::ErrorCode>;
    set_times_at(flags: fs::PathFlags, path: String, a: fs::NewTimestamp, m: fs::NewTimestamp) -> Result<(), fs::ErrorCode>;
    link_at(flags: fs::PathFlags, old: String, new_dir: fs::DescriptorBorrow<'_>, new: String) -> Result<(), fs::ErrorCode>;
    open_at(flags: fs::PathFlags, path: String, open: fs::OpenFlags, dflags: fs::DescriptorFlags) -> Result<fs::Descriptor, fs::ErrorCode>;
    readlink_at(path: String) -> Result<String, fs::ErrorCode>;
    remove_directory_at(path: String) -> Result<(), fs::ErrorCode>;
    rename_at(old: String, new_dir: fs::DescriptorBorrow<'_>, new: String) -> Result<(), fs::ErrorCode>;
    symlink_at(old: String, new: String) -> Result<(), fs::ErrorCode>;
    unlink_file_at(path: String) -> Result<(), fs::ErrorCode>;
    is_same_object(other: fs::DescriptorBorrow<'_>) -> bool;
    metadata_hash() -> Result<fs::MetadataHashValue, fs::ErrorCode>;
    metadata_hash_at(flags: fs::PathFlags, path: String) -> Result<fs::MetadataHashValue, fs::ErrorCode>;
});

/// Never made, as [`NoDescriptor`].
pub(crate) enum NoEntries {}

impl fs::GuestDirectoryEntryStream for NoEntries {
    fn read_directory_entry(&self) -> Result<Option<fs::DirectoryEntry>, fs::ErrorCode> {
        match *self {}
    }
}

impl fs::Guest for Front {
    type Descriptor = NoDescriptor;
    type DirectoryEntryStream = NoEntries;

    fn filesystem_error_code(_: ioerror::ErrorBorrow<'_>) -> Option<fs::ErrorCode> {
        None
    }
}

impl preopens::Guest for Front {
    fn get_directories() -> Vec<(fs::Descriptor, String)> {
        Vec::new()
    }
}
