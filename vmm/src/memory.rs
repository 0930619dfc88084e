//! Guest RAM: one lazily backed mapping per RAM range, the x86 MMIO hole
//! below 4 GiB left out, and the e820 map that describes it.
//!
//! By default the mappings are anonymous, `MAP_PRIVATE | MAP_NORESERVE`, so
//! a VM with 4 GiB of RAM costs only the pages the guest touches. A VM with
//! a vhost-user device ([`RamBacking::SharedMemfd`]) has its RAM in one
//! memfd instead, mapped `MAP_SHARED`, each range at its offset in the file:
//! the backend process maps the same pages from the memfd it is sent
//! (`VHOST_USER_SET_MEM_TABLE`). The memfd is sealed against shrinking and
//! growing, so a backend cannot pull pages out from under the VMM.
//! Either way each range starts on a 2 MiB boundary and is marked
//! `MADV_HUGEPAGE` (see [`RAM_ALIGN`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::{Bitmap, NewBitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::arch::x86_64::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use crate::error::{kvm_err, Result, VmmError};

/// The guest's physical memory.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<RamMapping>;

/// Where guest RAM starts in the host, and the unit of the hint: a huge
/// page (2 MiB). Aligned so, the host can back guest RAM with transparent
/// huge pages and KVM can map it into the guest 2 MiB at a time (only
/// possible where host address and guest address agree modulo 2 MiB): fewer
/// page faults, fewer TLB misses. In the nested lab a Linux guest reaches
/// /init about 18% sooner (measured). QEMU aligns and advises its RAM the
/// same way. The cost: a guest that touches one byte of a 2 MiB range may
/// get all of it, as the host's THP policy decides (`never`: no change).
pub const RAM_ALIGN: usize = 2 << 20;

/// The owner of one guest RAM mapping, in the place vm-memory keeps a
/// region's dirty bitmap (it tracks nothing).
///
/// vm-memory unmaps only the mappings it makes itself, and it makes them
/// wherever `mmap(NULL, ...)` puts them. Guest RAM is therefore mapped here,
/// aligned, and handed to vm-memory as a raw region; vm-memory keeps a
/// region's bitmap exactly as long as the region (the last
/// `GuestMemoryMmap` clone), so dropping this unmaps the memory neither too
/// early nor never. A default (empty) one owns nothing: the bitmap of
/// regions vm-memory maps itself, e.g. `GuestMemoryMmap::from_ranges` in
/// tests.
#[derive(Debug, Default)]
pub struct RamMapping {
    addr: usize,
    len: usize,
}

impl RamMapping {
    /// Maps `len` bytes starting on a [`RAM_ALIGN`] boundary, marked
    /// `MADV_HUGEPAGE`: anonymous memory, or with `file` the file's bytes
    /// from `offset`, shared.
    fn new(len: usize, file: Option<(&File, u64)>) -> io::Result<RamMapping> {
        let reserve = len
            .checked_add(RAM_ALIGN)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a new anonymous mapping; no address is given, so nothing
        // existing is replaced.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), reserve, RAM_PROT, RAM_FLAGS, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        let addr = base.next_multiple_of(RAM_ALIGN);
        let (head, tail) = (addr - base, base + reserve - (addr + len));
        if let Some((file, offset)) = file {
            if let Err(e) = map_file_over(addr, len, file, offset) {
                // SAFETY: the reservation made above, which nothing refers to.
                unsafe { libc::munmap(base as *mut libc::c_void, reserve) };
                return Err(e);
            }
        }
        // SAFETY: both ranges are the unaligned ends of the mapping just
        // made, which nothing refers to.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((addr + len) as *mut libc::c_void, tail);
            }
            // A hint: without THP it fails, and nothing changes.
            libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        // Tests run in parallel: an address another test's mapping had
        // (and recorded as unmapped) may be ours now.
        #[cfg(test)]
        tests::UNMAPPED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| *a != addr);
        Ok(RamMapping { addr, len })
    }
}

impl Drop for RamMapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // Recorded before the unmap: once unmapped, the address may be
            // handed to another test's new mapping at once.
            #[cfg(test)]
            tests::UNMAPPED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.addr);
            // SAFETY: the mapping made in `new`, owned by this value alone;
            // the region that used it is being dropped.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }
}

impl WithBitmapSlice<'_> for RamMapping {
    type S = ();
}

impl Bitmap for RamMapping {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

impl NewBitmap for RamMapping {
    fn with_len(_len: usize) -> Self {
        RamMapping::default()
    }
}

/// Maps `len` bytes of `file` from `offset`, shared, at `addr` (inside a
/// reservation of the caller's).
fn map_file_over(addr: usize, len: usize, file: &File, offset: u64) -> io::Result<()> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: MAP_FIXED replaces pages of the caller's fresh reservation
    // only (`addr..addr + len` lies inside it), which nothing refers to.
    let at = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            RAM_PROT,
            SHARED_RAM_FLAGS | libc::MAP_FIXED,
            file.as_raw_fd(),
            offset,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const RAM_PROT: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
const RAM_FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
const SHARED_RAM_FLAGS: libc::c_int = libc::MAP_SHARED | libc::MAP_NORESERVE;

/// What guest RAM is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamBacking {
    /// Anonymous private memory: no other process can map it.
    Private,
    /// One memfd, mapped shared, that vhost-user backends map too.
    SharedMemfd,
}

/// One guest RAM region of `len` bytes at guest address `start`, from
/// `file` at its offset when given.
fn ram_region(
    start: GuestAddress,
    len: usize,
    file: Option<FileOffset>,
) -> Result<GuestRegionMmap<RamMapping>> {
    let fail = |e: String| VmmError::Memory(format!("mapping {len} bytes of guest RAM: {e}"));
    let owner = RamMapping::new(len, file.as_ref().map(|f| (f.file(), f.start())))
        .map_err(|e| fail(e.to_string()))?;
    let addr = owner.addr as *mut u8;
    let flags = if file.is_some() {
        SHARED_RAM_FLAGS
    } else {
        RAM_FLAGS
    };
    let mut builder = MmapRegionBuilder::new_with_bitmap(len, owner)
        .with_mmap_prot(RAM_PROT)
        .with_mmap_flags(flags);
    if let Some(file) = file {
        builder = builder.with_file_offset(file);
    }
    // SAFETY: `addr..addr + len` is the mapping `owner` just made with
    // RAM_PROT and `flags`; the region keeps `owner`, which unmaps it
    // when the region is dropped, and nothing else unmaps it.
    let mapping =
        unsafe { builder.with_raw_mmap_pointer(addr).build() }.map_err(|e| fail(e.to_string()))?;
    GuestRegionMmap::new(mapping, start).ok_or_else(|| fail("the range overflows".into()))
}

/// A memfd of `len` bytes for guest RAM, sealed at that size.
fn ram_memfd(len: u64) -> io::Result<File> {
    // SAFETY: a C string and flags; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"amphi-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl with integer arguments on our descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Smallest guest RAM we accept: the legacy area plus room for a kernel.
pub const MIN_MEM_BYTES: u64 = 2 << 20;

/// The RAM ranges `(start, length)` of a guest with `mem_bytes` of RAM:
/// RAM runs up to the MMIO hole and continues above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if mem_bytes > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), mem_bytes - MMIO_GAP_START));
    }
    ranges
}

/// Maps `mem_bytes` of private guest RAM (not yet registered with KVM).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap> {
    create_guest_memory_with(mem_bytes, RamBacking::Private)
}

/// Maps `mem_bytes` of guest RAM made of `backing` (not yet registered
/// with KVM).
pub fn create_guest_memory_with(mem_bytes: u64, backing: RamBacking) -> Result<GuestMemoryMmap> {
    if mem_bytes < MIN_MEM_BYTES {
        return Err(VmmError::Config(format!(
            "guest memory {mem_bytes} bytes is below the minimum of {MIN_MEM_BYTES}"
        )));
    }
    let memfd = match backing {
        RamBacking::Private => None,
        RamBacking::SharedMemfd => Some(Arc::new(ram_memfd(mem_bytes).map_err(|e| {
            VmmError::Memory(format!(
                "creating a {mem_bytes}-byte memfd for shared guest RAM: {e}"
            ))
        })?)),
    };
    let mut offset = 0u64;
    let regions = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| {
            let file = memfd
                .as_ref()
                .map(|f| FileOffset::from_arc(f.clone(), offset));
            offset += len;
            let len = usize::try_from(len)
                .map_err(|_| VmmError::Memory(format!("{len} bytes do not fit this host")))?;
            ram_region(start, len, file)
        })
        .collect::<Result<Vec<_>>>()?;
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| VmmError::Memory(format!("mapping {mem_bytes} bytes of guest RAM: {e}")))
}

/// One region of another process's guest RAM table (a vhost-user
/// frontend's `VHOST_USER_SET_MEM_TABLE`): `len` bytes of `file` from
/// `offset`, at guest address `start`.
#[derive(Debug)]
pub struct SharedRegion {
    pub start: u64,
    pub len: u64,
    pub file: File,
    pub offset: u64,
}

/// Maps guest RAM that another process made, as `regions` describe it,
/// shared (the vhost-user relay's view of QEMU's guest RAM). Each region
/// must lie inside its file (a page past the end would fault the process
/// on access), start on a page boundary in it, and not overlap another.
pub fn map_shared_regions(regions: Vec<SharedRegion>) -> Result<GuestMemoryMmap> {
    let page = 4096u64;
    let mapped = regions
        .into_iter()
        .map(|r| {
            let what = format!(
                "guest RAM region at {:#x} ({} bytes from offset {:#x} of its file)",
                r.start, r.len, r.offset
            );
            let size = r
                .file
                .metadata()
                .map_err(|e| VmmError::Memory(format!("{what}: {e}")))?
                .len();
            let end = r.offset.checked_add(r.len);
            if r.len == 0 || r.offset % page != 0 || end.is_none_or(|e| e > size) {
                return Err(VmmError::Memory(format!(
                    "{what}: not a page-aligned, non-empty range inside the file of {size} bytes"
                )));
            }
            let len = usize::try_from(r.len)
                .map_err(|_| VmmError::Memory(format!("{what}: too large for this host")))?;
            ram_region(
                GuestAddress(r.start),
                len,
                Some(FileOffset::new(r.file, r.offset)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    GuestMemoryMmap::from_regions(mapped)
        .map_err(|e| VmmError::Memory(format!("the guest RAM table: {e}")))
}

/// Registers every region of `memory` with KVM as a memory slot (slot = index).
pub fn register_with_kvm(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let slot = u32::try_from(slot).map_err(|_| VmmError::Memory("too many regions".into()))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `memory`, which the
        // `Vm` keeps for as long as the VM fd (and so the slot) exists.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The type of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it as RAM.
    Reserved = 2,
}

/// One entry of the e820 memory map handed to the guest kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The e820 map of a guest with `mem_bytes` of RAM: low RAM up to the EBDA,
/// the legacy BIOS/VGA area reserved, RAM from 1 MiB up to the MMIO hole and
/// the remainder above 4 GiB.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    let low_end = mem_bytes.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// End of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_vm_has_one_range_and_three_e820_entries() {
        assert_eq!(ram_ranges(64 * MIB), vec![(GuestAddress(0), 64 * MIB)]);
        let map = e820_map(64 * MIB);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(map[1].kind, E820Kind::Reserved);
        assert_eq!(map[1].addr + map[1].size, HIMEM_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: 63 * MIB,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn large_vm_skips_the_mmio_hole() {
        let mem = 5 * GIB;
        assert_eq!(
            ram_ranges(mem),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 2 * GIB)]
        );
        let map = e820_map(mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: 2 * GIB,
                kind: E820Kind::Ram
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the legacy hole between the EBDA and 1 MiB is usable.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_entries_are_sorted_and_disjoint() {
        for mem in [2 * MIB, 3 * GIB, 3 * GIB + 4096, 9 * GIB] {
            let map = e820_map(mem);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{mem:#x}: {map:?}"
                );
            }
        }
    }

    #[test]
    fn guest_memory_is_lazily_backed_and_holed() {
        let mem = create_guest_memory(3 * GIB + 16 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress(4 * GIB + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(4 * GIB + 8)).unwrap(),
            0xdead_beef
        );
        assert!(mem
            .read_obj::<u32>(GuestAddress(MMIO_GAP_START + 16))
            .is_err());
        assert!(create_guest_memory(MIB).is_err());
    }

    #[test]
    fn shared_guest_memory_is_one_sealed_memfd_at_offsets() {
        use std::os::unix::fs::FileExt;
        let mem = create_guest_memory_with(3 * GIB + 16 * MIB, RamBacking::SharedMemfd).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (low, high) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert_eq!((low.start(), high.start()), (0, 3 * GIB));
        assert!(Arc::ptr_eq(low.arc(), high.arc()), "one memfd");
        for r in &regions {
            assert_eq!(r.as_ptr() as usize % RAM_ALIGN, 0);
        }
        // What the guest writes is in the file, where a backend maps it.
        mem.write_obj(0x5eed_u32, GuestAddress(4 * GIB + 8))
            .unwrap();
        mem.write_obj(0xf00d_u32, GuestAddress(0x1000)).unwrap();
        let file = low.file();
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, 3 * GIB + 8).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x5eed);
        file.read_exact_at(&mut word, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xf00d);
        // Sealed: no one shrinks it under the VMM (or grows it).
        assert!(file.set_len(GIB).is_err());
        assert!(file.set_len(4 * GIB).is_err());
        // The private kind has no file.
        let private = create_guest_memory(4 * MIB).unwrap();
        assert!(private.iter().all(|r| r.file_offset().is_none()));
    }

    /// Host addresses of the RAM mappings unmapped so far (every test's).
    pub(super) static UNMAPPED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

    fn unmapped(addr: usize) -> bool {
        UNMAPPED.lock().unwrap().contains(&addr)
    }

    #[test]
    fn guest_ram_is_huge_page_aligned_and_unmapped_with_the_last_clone() {
        let mem = create_guest_memory(3 * GIB + 16 * MIB).unwrap();
        let hosts: Vec<usize> = mem.iter().map(|r| r.as_ptr() as usize).collect();
        assert_eq!(hosts.len(), 2);
        for host in &hosts {
            assert_eq!(host % RAM_ALIGN, 0, "{host:#x}");
        }
        let clone = mem.clone();
        drop(mem);
        assert!(!hosts.iter().any(|h| unmapped(*h)), "unmapped too early");
        clone.write_obj(7u8, GuestAddress(4 * GIB)).unwrap();
        assert_eq!(clone.read_obj::<u8>(GuestAddress(4 * GIB)).unwrap(), 7);
        drop(clone);
        assert!(hosts.iter().all(|h| unmapped(*h)), "not unmapped");
        // Regions vm-memory maps itself carry an empty owner.
        assert_eq!(RamMapping::with_len(4096).len, 0);
    }
}
