//! What differs between Unix and Windows, each behind one small named function, so the rest
//! of the broker is the same on both:
//!
//! * [`raise_fd_limit`]: Unix raises the soft limit on open files to the hard one (every
//!   connection is a descriptor); Windows has no such per-process limit on sockets.
//! * [`restrict_new_files`]: Unix sets the umask to 077, so what the broker creates is for its
//!   user only; on Windows files inherit the ACL of their directory, and the files that hold
//!   secrets get their own ([`restrict_to_owner`]).
//! * [`restrict_to_owner`]: a secret file (the admin token) readable by its owner only —
//!   mode 0600 on Unix; on Windows a protected DACL with one entry, full access for the
//!   current user, and none inherited.
//! * [`shutdown_requested`]: SIGTERM or SIGINT on Unix; Ctrl-C, Ctrl-Break, closing the
//!   console or a system shutdown on Windows (what a service manager sends a console program).
//!
//! Paths need no seam (`std::path` and the config's relative paths work on both), and plugins
//! are loaded as `.so` or `.dll` by [`crate::plugin::loader`], which copies each library into
//! its content-addressed cache first: the file in the plugin directory is never the one
//! mapped, so on Windows too a rebuilt plugin can overwrite it and `plugins reload` load it.

use std::path::Path;

/// Raises the soft limit on open files to the hard limit; the limit in force, where there is
/// one.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return None;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// No per-process limit on sockets to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// Makes every file the process creates from now on private to its user (umask 077).
#[cfg(unix)]
pub fn restrict_new_files() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Files inherit their directory's ACL; secrets are restricted one by one.
#[cfg(not(unix))]
pub fn restrict_new_files() {}

/// Makes `path` readable and writable by its owner only.
#[cfg(unix)]
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Makes `path` accessible to the current user only: a protected DACL (nothing inherited)
/// whose one entry grants that user full access.
#[cfg(windows)]
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::Security::Authorization::{SetNamedSecurityInfoW, SE_FILE_OBJECT};
    use windows_sys::Win32::Security::{
        AddAccessAllowedAce, GetLengthSid, GetTokenInformation, InitializeAcl, TokenUser,
        ACCESS_ALLOWED_ACE, ACL, ACL_REVISION, DACL_SECURITY_INFORMATION,
        PROTECTED_DACL_SECURITY_INFORMATION, TOKEN_QUERY, TOKEN_USER,
    };
    use windows_sys::Win32::Storage::FileSystem::FILE_ALL_ACCESS;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    let last = std::io::Error::last_os_error;
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: every pointer passed below points into a live, large enough, suitably aligned
    // buffer owned by this function (u64 vectors for the variable-length TOKEN_USER and ACL);
    // the token handle is closed on every path after it was opened.
    unsafe {
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(last());
        }
        let mut len = 0u32;
        GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len);
        let mut user = vec![0u64; (len as usize).div_ceil(8)];
        let ok = GetTokenInformation(token, TokenUser, user.as_mut_ptr().cast(), len, &mut len);
        let error = last();
        CloseHandle(token);
        if ok == 0 {
            return Err(error);
        }
        let sid = (*user.as_ptr().cast::<TOKEN_USER>()).User.Sid;
        let acl_len = std::mem::size_of::<ACL>()
            + std::mem::size_of::<ACCESS_ALLOWED_ACE>()
            + GetLengthSid(sid) as usize;
        let mut acl = vec![0u64; acl_len.div_ceil(8)];
        let acl_ptr = acl.as_mut_ptr().cast::<ACL>();
        if InitializeAcl(acl_ptr, acl_len as u32, ACL_REVISION) == 0
            || AddAccessAllowedAce(acl_ptr, ACL_REVISION, FILE_ALL_ACCESS, sid) == 0
        {
            return Err(last());
        }
        let status = SetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            acl_ptr,
            std::ptr::null(),
        );
        if status != 0 {
            return Err(std::io::Error::from_raw_os_error(status as i32));
        }
    }
    Ok(())
}

/// Waits until the operator asks the broker to stop; names how.
#[cfg(unix)]
pub async fn shutdown_requested() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Waits until the operator asks the broker to stop; names how.
#[cfg(windows)]
pub async fn shutdown_requested() -> std::io::Result<&'static str> {
    use tokio::signal::windows;
    let mut c = windows::ctrl_c()?;
    let mut brk = windows::ctrl_break()?;
    let mut close = windows::ctrl_close()?;
    let mut shutdown = windows::ctrl_shutdown()?;
    Ok(tokio::select! {
        _ = c.recv() => "Ctrl-C",
        _ = brk.recv() => "Ctrl-Break",
        _ = close.recv() => "console closed",
        _ = shutdown.recv() => "system shutdown",
    })
}
