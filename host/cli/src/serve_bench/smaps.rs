//! Where a server's memory per idle connection goes, by kind of mapping:
//! the growth of each kind's private dirty pages in `/proc/PID/smaps`.
//!
//! One PSS figure per connection says how much; this says what to cut.
//! A wasmtime guest's linear memory is a slot of the pooling allocator:
//! the anonymous pages below its copy-on-write image (a Rust guest's
//! stack), the image's pages it wrote, and the anonymous pages above the
//! image (its heap). Instances' `VMContext`s and the store live in the
//! malloc heap; tables are in another anonymous pool.

use std::collections::BTreeMap;

/// What a mapping holds, as far as its name, size and neighbours tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    /// `[heap]`, and glibc's per-thread arenas (anonymous, aligned to and
    /// at most their 64 MiB).
    Malloc,
    /// A Wasm linear memory's anonymous pages below its image: a Rust
    /// guest's stack.
    WasmBelowImage,
    /// Pages of a Wasm memory image (`memfd:wasm-memory-image`) a guest
    /// wrote: its data and bss.
    WasmImage,
    /// A Wasm linear memory's anonymous pages above its image: its heap.
    WasmAboveImage,
    /// Anonymous mappings of 1 GiB or more: wasmtime's reservations for
    /// linear memories with no image.
    LargeReservation,
    /// Every other anonymous mapping (wasmtime's table pool, thread
    /// stacks).
    OtherAnonymous,
    /// Mappings of files (the binary, libraries).
    File,
}

impl Kind {
    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Malloc => "malloc heap",
            Kind::WasmBelowImage => "Wasm memory below image (stack)",
            Kind::WasmImage => "Wasm memory image pages",
            Kind::WasmAboveImage => "Wasm memory above image (heap)",
            Kind::LargeReservation => "Wasm memory without image",
            Kind::OtherAnonymous => "other anonymous (tables, stacks)",
            Kind::File => "file-backed",
        }
    }
}

/// One mapping of `smaps`: its range, its name, and its private dirty KiB.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    name: String,
    private_dirty_kib: u64,
}

/// The image mappings wasmtime makes for linear memories.
const IMAGE: &str = "memfd:wasm-memory-image";

/// glibc's thread arenas are reserved at this size and alignment.
const ARENA: u64 = 64 << 20;

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            // perms, offset, dev, inode, then the name (which may hold spaces).
            let name = fields.skip(4).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                name,
                private_dirty_kib: 0,
            });
        } else if first == "Private_Dirty:"
            && let Some(last) = out.last_mut()
        {
            last.private_dirty_kib = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    out
}

fn classify(maps: &[Mapping]) -> Vec<Kind> {
    let is_image = |m: &Mapping| m.name.contains(IMAGE);
    maps.iter()
        .enumerate()
        .map(|(i, m)| {
            let size = m.end - m.start;
            if is_image(m) {
                return Kind::WasmImage;
            }
            if m.name == "[heap]" {
                return Kind::Malloc;
            }
            if !m.name.is_empty() && !m.name.starts_with('[') {
                return Kind::File;
            }
            if !m.name.is_empty() {
                return Kind::OtherAnonymous;
            }
            let next = maps.get(i + 1);
            let prev = i.checked_sub(1).and_then(|p| maps.get(p));
            if next.is_some_and(|n| is_image(n) && n.start == m.end) {
                Kind::WasmBelowImage
            } else if prev.is_some_and(|p| is_image(p) && p.end == m.start) && size < 1 << 30 {
                Kind::WasmAboveImage
            } else if size >= 1 << 30 {
                Kind::LargeReservation
            } else if m.start % ARENA == 0 && size <= ARENA {
                Kind::Malloc
            } else {
                Kind::OtherAnonymous
            }
        })
        .collect()
}

/// Private dirty KiB of one `smaps` text, by kind.
pub(super) fn by_kind(smaps: &str) -> BTreeMap<Kind, u64> {
    let maps = parse(smaps);
    let mut out = BTreeMap::new();
    for (m, kind) in maps.iter().zip(classify(&maps)) {
        *out.entry(kind).or_insert(0) += m.private_dirty_kib;
    }
    out
}

/// Private dirty KiB of processes, by kind, summed.
pub(super) fn of_processes(pids: &[u32]) -> BTreeMap<Kind, u64> {
    let mut out = BTreeMap::new();
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            continue;
        };
        for (kind, kib) in by_kind(&text) {
            *out.entry(kind).or_insert(0) += kib;
        }
    }
    out
}

/// Growth per connection of each kind between two snapshots, KiB, largest
/// first; kinds that moved by less than a tenth of a KiB are left out.
pub(super) fn growth(
    before: &BTreeMap<Kind, u64>,
    after: &BTreeMap<Kind, u64>,
    connections: u32,
) -> Vec<(Kind, f64)> {
    let mut out: Vec<(Kind, f64)> = after
        .iter()
        .map(|(kind, kib)| {
            let was = before.get(kind).copied().unwrap_or(0);
            (
                *kind,
                (*kib as f64 - was as f64) / f64::from(connections.max(1)),
            )
        })
        .filter(|(_, per)| per.abs() >= 0.1)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's smaps, cut down: a thread arena, a guest memory slot
    /// (stack below the image, the image, heap above), the rest of the
    /// slot reservation, the table pool, and the binary.
    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/keyferry
Private_Dirty:         0 kB
55d0c1000000-55d0c1200000 rw-p 00000000 00:00 0 [heap]
Private_Dirty:       100 kB
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Private_Dirty:       640 kB
7f1000000000-7f1000100000 rw-p 00000000 00:00 0
Private_Dirty:         8 kB
7f1000100000-7f100010c000 rw-p 00000000 00:01 22 /memfd:wasm-memory-image (deleted)
Private_Dirty:         4 kB
7f100010c000-7f1000114000 rw-p 00000000 00:00 0
Private_Dirty:         8 kB
7f1000114000-7f1100000000 ---p 00000000 00:00 0
Private_Dirty:         0 kB
7f2000001000-7f2010000000 rw-p 00000000 00:00 0
Private_Dirty:        12 kB
";

    #[test]
    fn mappings_are_told_apart_by_name_size_and_neighbour() {
        let kinds = by_kind(SMAPS);
        assert_eq!(kinds[&Kind::Malloc], 740);
        assert_eq!(kinds[&Kind::WasmBelowImage], 8);
        assert_eq!(kinds[&Kind::WasmImage], 4);
        assert_eq!(kinds[&Kind::WasmAboveImage], 8);
        assert_eq!(kinds[&Kind::LargeReservation], 0);
        assert_eq!(kinds[&Kind::OtherAnonymous], 12);
        assert_eq!(kinds[&Kind::File], 0);
    }

    #[test]
    fn growth_is_per_connection_and_largest_first() {
        let before = BTreeMap::from([(Kind::Malloc, 1000), (Kind::WasmImage, 40)]);
        let after = BTreeMap::from([
            (Kind::Malloc, 3000),
            (Kind::WasmImage, 440),
            (Kind::File, 0),
        ]);
        assert_eq!(
            growth(&before, &after, 100),
            vec![(Kind::Malloc, 20.0), (Kind::WasmImage, 4.0)]
        );
    }
}
