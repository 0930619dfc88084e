//! How much of its own executable the jail's supervisor keeps resident.
//!
//! The kernel maps file pages around each page fault (fault-around: 64 KiB
//! windows by default), so the startup code, scattered over 1.5 MiB of
//! text, leaves nearly all of it mapped in the process, and in the
//! supervisor forked from it, which then only waits. [`drop_resident`]
//! (`MADV_DONTNEED` on the executable's read-only `PT_LOAD` segments: text
//! and read-only data, never written, since a static PIE has no text
//! relocations and RELRO is in the writable segment) unmaps them; what
//! runs next faults its pages back in from the page cache, which keeps
//! them (shared with the VMM). Measured with a tiny guest: the
//! supervisor's resident file pages go from 1.7 MiB to 0.6 MiB. The VMM
//! itself gains nothing from it (a running VM touches code in nearly every
//! 64 KiB window of the text again), so it does not.

/// The executable's read-only `PT_LOAD` segments, as whole pages inside
/// each (a page shared with a writable segment is left out): (start,
/// length).
fn read_only_segments() -> Vec<(usize, usize)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid dl_phdr_info and `data` is the
        // Vec given to dl_iterate_phdr below, alive for the call.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
        // SAFETY: dlpi_name is a NUL-terminated string (empty for the
        // executable, which comes first).
        let main = info.dlpi_name.is_null() || unsafe { *info.dlpi_name } == 0;
        if !main || info.dlpi_phdr.is_null() {
            return 0; // the next object
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let page = page_size();
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let (Ok(vaddr), Ok(memsz)) = (usize::try_from(h.p_vaddr), usize::try_from(h.p_memsz))
            else {
                continue;
            };
            let start = (info.dlpi_addr as usize + vaddr).next_multiple_of(page);
            let end = (info.dlpi_addr as usize + vaddr + memsz) / page * page;
            if end > start {
                out.push((start, end - start));
            }
        }
        1 // done
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the headers and pushes to `out`,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut out).cast()) };
    out
}

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Unmaps the executable's resident text and read-only data from this
/// process; what runs next maps its pages back as it needs them.
pub fn drop_resident() {
    for (start, len) in read_only_segments() {
        // SAFETY: whole pages of the executable's own read-only, never
        // written mappings: MADV_DONTNEED on them only unmaps pages the
        // page cache keeps (the next access maps the same contents back).
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_found_and_survives_being_dropped() {
        let segments = read_only_segments();
        let here = the_text_is_found_and_survives_being_dropped as *const () as usize;
        assert!(
            segments.iter().any(|&(s, l)| (s..s + l).contains(&here)),
            "{here:#x} not in {segments:x?}"
        );
        drop_resident();
        // Still runs, and reads its read-only data.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
