//! System calls on paths relative to an open directory (`fstatat`,
//! `openat`): no walk from `/` for each of a project's 30,000 paths, and
//! the lowest layer of file access, below `files.rs` and `stamp.rs`.

/// `lstat` of `rel` relative to an open directory (no path walk from `/`);
/// `None` when `rel` cannot be passed to the kernel (a NUL byte).
pub fn lstat_at(dir: &std::fs::File, rel: &str) -> Option<std::io::Result<libc::stat>> {
    fstat_at(dir, rel, libc::AT_SYMLINK_NOFOLLOW)
}

/// [`lstat_at`], following a final symlink.
pub fn stat_at(dir: &std::fs::File, rel: &str) -> Option<std::io::Result<libc::stat>> {
    fstat_at(dir, rel, 0)
}

fn fstat_at(
    dir: &std::fs::File,
    rel: &str,
    flags: libc::c_int,
) -> Option<std::io::Result<libc::stat>> {
    use std::os::fd::AsRawFd;
    let rel = if rel.is_empty() { "." } else { rel };
    if rel.as_bytes().contains(&0) {
        return None;
    }
    // the path, NUL-terminated, on the stack: a no-op build stats 30,000
    // paths at 10,000 targets, and an allocation each was a tenth of it
    let mut short = [0u8; 256];
    let long;
    let c: &[u8] = if rel.len() < short.len() {
        short[..rel.len()].copy_from_slice(rel.as_bytes());
        &short[..=rel.len()]
    } else {
        long = std::ffi::CString::new(rel).ok()?;
        long.as_bytes_with_nul()
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated with no NUL before (checked above),
    // `st` is written by fstatat before it is read, and `dir` keeps the
    // descriptor open.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr().cast(), st.as_mut_ptr(), flags) };
    if rc != 0 {
        return Some(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: fstatat returned 0, so it filled `st`.
    Some(Ok(unsafe { st.assume_init() }))
}

/// Opens `rel` for reading relative to an open directory, without
/// following a final symlink.
pub fn open_at(dir: &std::fs::File, rel: &str) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = std::ffi::CString::new(rel).ok()?;
    // SAFETY: `c` is NUL-terminated and `dir` keeps its descriptor open; a
    // non-negative result is a new descriptor that we own from here on.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    // SAFETY: see above; `fd` is open and owned by nobody else.
    (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
}
