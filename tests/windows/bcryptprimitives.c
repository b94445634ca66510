/*
 * bcryptprimitives.dll for Wine 8 (Debian 12's), which lacks it. Windows 10 and later ship it,
 * and Rust's standard library asks its ProcessPrng for random bytes, so without it no Rust
 * program starts under that Wine ("bcryptprimitives.dll not found", status c0000135).
 * Only the Windows smoke test's Wine prefix gets this file (tests/run.sh builds it); nothing
 * shipped uses it. ProcessPrng fills the buffer from RtlGenRandom (advapi32).
 */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
