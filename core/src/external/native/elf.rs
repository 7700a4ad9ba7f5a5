//! Checks an ELF file before `dlopen` maps it. dlopen trusts the headers: a truncated library (a copy or a
//! download cut short) has segments that reach past the end of the file, and touching their pages raises
//! SIGBUS in berthd. So the file must be a shared object of berthd's own class, byte order and machine, with
//! its program headers, loadable segments and section headers inside the file.

const PT_LOAD: u32 = 1;
const ET_DYN: u16 = 3;

fn u16_at(b: &[u8], at: usize, little: bool) -> Option<u16> {
    let bytes: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if little { u16::from_le_bytes(bytes) } else { u16::from_be_bytes(bytes) })
}

fn u32_at(b: &[u8], at: usize, little: bool) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if little { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) })
}

fn u64_at(b: &[u8], at: usize, little: bool) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(if little { u64::from_le_bytes(bytes) } else { u64::from_be_bytes(bytes) })
}

/// The class, byte order and machine of berthd's own executable, to compare a library's with.
fn host_identity() -> Option<(u8, u8, u16)> {
    let mut header = [0u8; 20];
    use std::io::Read;
    std::fs::File::open("/proc/self/exe").ok()?.read_exact(&mut header).ok()?;
    Some((header[4], header[5], u16_at(&header, 18, header[5] == 1)?))
}

/// Why `content` cannot be loaded, if it cannot.
pub(super) fn check(content: &[u8]) -> Result<(), String> {
    if !content.starts_with(b"\x7fELF") {
        return Err("it is not an ELF file".into());
    }
    let short = || format!("it is truncated: its ELF header needs more than the {} bytes the file has", content.len());
    let (class, data) = (*content.get(4).ok_or_else(short)?, *content.get(5).ok_or_else(short)?);
    let little = data == 1;
    let machine = u16_at(content, 18, little).ok_or_else(short)?;
    if let Some((host_class, host_data, host_machine)) = host_identity() {
        if (class, data) != (host_class, host_data) {
            return Err(format!(
                "it is a {}-bit {} library, berthd is {}-bit {}",
                if class == 2 { 64 } else { 32 },
                if little { "little-endian" } else { "big-endian" },
                if host_class == 2 { 64 } else { 32 },
                if host_data == 1 { "little-endian" } else { "big-endian" }
            ));
        }
        if machine != host_machine {
            return Err(format!("it is built for another machine (ELF machine {machine}, berthd's is {host_machine})"));
        }
    }
    if class != 2 {
        return Err("only 64-bit libraries are checked and loaded".into());
    }
    let kind = u16_at(content, 16, little).ok_or_else(short)?;
    if kind != ET_DYN {
        return Err(format!("it is not a shared library (ELF type {kind})"));
    }
    let len = content.len() as u64;
    let phoff = u64_at(content, 32, little).ok_or_else(short)?;
    let shoff = u64_at(content, 40, little).ok_or_else(short)?;
    let phentsize = u64::from(u16_at(content, 54, little).ok_or_else(short)?);
    let phnum = u64::from(u16_at(content, 56, little).ok_or_else(short)?);
    let shentsize = u64::from(u16_at(content, 58, little).ok_or_else(short)?);
    let shnum = u64::from(u16_at(content, 60, little).ok_or_else(short)?);
    let truncated =
        |what: &str, end: u64| format!("it is truncated: its {what} end at byte {end}, the file has {len} bytes");
    let ph_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if ph_end > len || phentsize < 56 {
        return Err(truncated("program headers", ph_end));
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        if u32_at(content, at, little) != Some(PT_LOAD) {
            continue;
        }
        let offset = u64_at(content, at + 8, little).ok_or_else(short)?;
        let size = u64_at(content, at + 32, little).ok_or_else(short)?;
        let end = offset.saturating_add(size);
        if end > len {
            return Err(truncated(&format!("loadable segment {i}"), end));
        }
    }
    let sh_end = shoff.saturating_add(shentsize.saturating_mul(shnum));
    if shnum > 0 && sh_end > len {
        return Err(truncated("section headers", sh_end));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn berthds_own_libraries_pass_and_cut_copies_do_not() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6"]
            .into_iter()
            .find_map(|p| std::fs::read(p).ok())
            .expect("a libc.so.6");
        check(&libc).unwrap();
        for cut in [10, 100, 2000, libc.len() / 2, libc.len() - 1] {
            let e = check(&libc[..cut]).unwrap_err();
            assert!(e.starts_with("it is truncated"), "{cut}: {e}");
        }
        assert_eq!(check(b"#!/bin/sh\n").unwrap_err(), "it is not an ELF file");
        // An executable (ET_EXEC); position-independent ones are ET_DYN too, and dlopen refuses them itself.
        let mut exec = libc.clone();
        exec[16..18].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(check(&exec).unwrap_err(), "it is not a shared library (ELF type 2)");
    }
}
