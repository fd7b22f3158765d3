//! CalendarServer's own test collections (`shared/corpus/cs-file-store/*/calendar.*.tgz`), made
//! with tar on Mac OS X: each file's extended attributes travel beside it as an AppleDouble member
//! `._NAME`. [`extract`] unpacks a tarball and puts those attributes back as real extended
//! attributes on the extracted files, the way CalendarServer on Linux names them: the Mac OS X
//! prefix `WebDAV:` becomes `user.` (twext `xattrprops.py`: `user.` on `linux2`); any other
//! attribute gets `user.` in front of its Mac OS X name.
//!
//! AppleDouble (version 2): magic 0x00051607, version, 16 bytes filler, a count of entries, then
//! entries (id, offset, length; big-endian u32). Entry 9, the Finder info, holds 32 bytes of
//! Finder info, 2 bytes of padding and Mac OS X's extended-attribute block: "ATTR", debug tag,
//! total size, data start, data length, 3 reserved words, flags (u16), count (u16), then per
//! attribute: offset (u32, from the start of the file), length (u32), flags (u16), name length
//! (u8, NUL included), the name; each entry padded to 4 bytes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated at {at}"))
}

fn be16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated at {at}"))
}

/// The extended attributes (Mac OS X names, raw values) an AppleDouble file carries.
pub fn parse(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    if be32(b, 0)? != 0x0005_1607 {
        return Err("not an AppleDouble file (magic)".into());
    }
    if be32(b, 4)? != 0x0002_0000 {
        return Err(format!("AppleDouble version {:#x}", be32(b, 4)?));
    }
    let entries = be16(b, 24)? as usize;
    let mut out = Vec::new();
    for i in 0..entries {
        let at = 26 + 12 * i;
        let (id, offset) = (be32(b, at)?, be32(b, at + 4)? as usize);
        if id != 9 {
            continue;
        }
        let attr = offset + 32 + 2;
        if b.get(attr..attr + 4) != Some(b"ATTR".as_slice()) {
            return Ok(out); // Finder info without attributes
        }
        let count = be16(b, attr + 34)? as usize;
        let mut e = attr + 36;
        for _ in 0..count {
            let (off, len) = (be32(b, e)? as usize, be32(b, e + 4)? as usize);
            let name_len = *b.get(e + 10).ok_or("truncated name length")? as usize;
            let name = b
                .get(e + 11..e + 11 + name_len)
                .ok_or("truncated name")?
                .split(|&c| c == 0)
                .next()
                .unwrap_or_default();
            let value = b
                .get(off..off + len)
                .ok_or("attribute value outside the file")?;
            out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
            e = (e + 11 + name_len + 3) & !3;
        }
    }
    Ok(out)
}

/// The attribute name CalendarServer on Linux uses for a Mac OS X one.
pub fn linux_name(mac: &str) -> String {
    match mac.strip_prefix("WebDAV:") {
        Some(rest) => format!("user.{rest}"),
        None => format!("user.{mac}"),
    }
}

/// Attribute names and raw values.
pub type Attrs = Vec<(String, Vec<u8>)>;

/// What [`extract`] did.
pub struct Extracted {
    /// The top folder of the tarball (`calendar.10`, ...).
    pub root: PathBuf,
    /// Per file or folder given attributes: its path and the (Linux) attributes set.
    pub attributes: Vec<(PathBuf, Attrs)>,
}

/// Extracts `tgz` into `into` with the system's tar, turns every `._NAME` member into extended
/// attributes on `NAME` (then removes it), and returns the top folder.
pub fn extract(tgz: &Path, into: &Path) -> Extracted {
    std::fs::create_dir_all(into).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(tgz)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(st.success(), "tar -xzf {} failed", tgz.display());
    let mut doubles = Vec::new();
    let mut stack = vec![into.to_path_buf()];
    let mut top = None;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("._") {
                doubles.push(p);
            } else if e.file_type().unwrap().is_dir() {
                if d == into {
                    top = Some(p.clone());
                }
                stack.push(p);
            }
        }
    }
    doubles.sort();
    let mut attributes = Vec::new();
    for double in doubles {
        let name = double.file_name().unwrap().to_string_lossy()[2..].to_string();
        let target = double.with_file_name(&name);
        let parsed = parse(&std::fs::read(&double).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", double.display()));
        let mut set = Vec::new();
        for (mac, value) in parsed {
            let linux = linux_name(&mac);
            xattr::set(&target, &linux, &value)
                .unwrap_or_else(|e| panic!("cannot set {linux} on {}: {e}", target.display()));
            set.push((linux, value));
        }
        std::fs::remove_file(&double).unwrap();
        attributes.push((target, set));
    }
    Extracted {
        root: top.expect("a top folder in the tarball"),
        attributes,
    }
}

#[test]
fn parses_a_minimal_appledouble_file() {
    // Header, one Finder-info entry whose ATTR block holds one attribute.
    let name = b"WebDAV:{DAV:}getcontenttype\0";
    let value = b"<x/>";
    let mut b = vec![0, 5, 0x16, 7, 0, 2, 0, 0];
    b.extend_from_slice(b"Mac OS X        ");
    b.extend_from_slice(&1u16.to_be_bytes());
    let fi = 26 + 12;
    b.extend_from_slice(&9u32.to_be_bytes());
    b.extend_from_slice(&(fi as u32).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // length: unused by the reader
    b.resize(fi + 34, 0);
    let entry = fi + 34 + 36;
    let data = (entry + 11 + name.len() + 3) & !3;
    b.extend_from_slice(b"ATTR");
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&[0; 12]);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(data as u32).to_be_bytes());
    b.extend_from_slice(&(value.len() as u32).to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b.resize(data, 0);
    b.extend_from_slice(value);
    assert_eq!(
        parse(&b).unwrap(),
        vec![("WebDAV:{DAV:}getcontenttype".to_string(), value.to_vec())]
    );
    assert_eq!(
        linux_name("WebDAV:{DAV:}getcontenttype"),
        "user.{DAV:}getcontenttype"
    );
    assert!(parse(b"not one").is_err());
}
