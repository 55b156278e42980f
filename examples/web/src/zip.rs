//! A zip file of stored (uncompressed) entries: the trained folder as one download. Weights
//! hardly compress, and the format is small enough to write here (PKWARE's APPNOTE 4.3:
//! local headers, the central directory, its end record; UTF-8 names, no ZIP64).

/// CRC-32 (IEEE 802.3, reflected, as zip checks its entries).
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A zip file holding `entries` (path in the archive, bytes), stored; an error when it would
/// need ZIP64 (an entry or the whole of 4 GiB or more, 65535 entries or more).
pub fn stored(entries: &[(String, &[u8])]) -> Result<Vec<u8>, String> {
    let too_big = || "the folder is too large for a zip without ZIP64 (4 GiB)".to_string();
    let n = u16::try_from(entries.len()).map_err(|_| "too many files for one zip")?;
    // Version 2.0; flag bit 11: names in UTF-8; 1980-01-01 00:00 (zip's earliest date).
    let (version, flags, time, date) = (20u16, 0x0800u16, 0u16, 0x0021u16);
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, bytes) in entries {
        let offset = u32::try_from(out.len()).map_err(|_| too_big())?;
        let size = u32::try_from(bytes.len()).map_err(|_| too_big())?;
        let name_len = u16::try_from(name.len()).map_err(|_| "a file name too long for zip")?;
        let crc = crc32(bytes);
        let common = |v: &mut Vec<u8>| {
            for x in [version, flags, 0, time, date] {
                v.extend(x.to_le_bytes());
            }
            for x in [crc, size, size] {
                v.extend(x.to_le_bytes());
            }
            v.extend(name_len.to_le_bytes());
            v.extend(0u16.to_le_bytes()); // no extra field
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend(name.as_bytes());
        out.extend(*bytes);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(version.to_le_bytes()); // made by
        common(&mut central);
        for x in [0u16, 0, 0] {
            central.extend(x.to_le_bytes()); // comment, disk, internal attributes
        }
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let central_offset = u32::try_from(out.len()).map_err(|_| too_big())?;
    let central_size = u32::try_from(central.len()).map_err(|_| too_big())?;
    out.extend(central);
    u32::try_from(out.len() + 22).map_err(|_| too_big())?;
    out.extend(0x0605_4b50u32.to_le_bytes());
    for x in [0u16, 0, n, n] {
        out.extend(x.to_le_bytes());
    }
    out.extend(central_size.to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // no comment
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }

    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
    }

    #[test]
    fn crc32_is_zips() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Reads the archive back through its central directory, as an unzipper does.
    #[test]
    fn entries_read_back_through_the_central_directory() {
        let entries: Vec<(String, &[u8])> = vec![
            ("out/config.json".into(), b"{\"label2id\": {}}"),
            ("out/model.safetensors".into(), &[0u8, 1, 2, 255]),
            ("out/empty".into(), b""),
        ];
        let zip = stored(&entries).unwrap();
        let end = zip.len() - 22;
        assert_eq!(u32_at(&zip, end), 0x0605_4b50);
        assert_eq!(u16_at(&zip, end + 10), 3);
        let (size, mut at) = (u32_at(&zip, end + 12), u32_at(&zip, end + 16));
        assert_eq!(at + size, end);
        for (name, bytes) in &entries {
            assert_eq!(u32_at(&zip, at), 0x0201_4b50);
            assert_eq!(u32_at(&zip, at + 16), crc32(bytes) as usize);
            let (n, local) = (u16_at(&zip, at + 28), u32_at(&zip, at + 42));
            assert_eq!(&zip[at + 46..at + 46 + n], name.as_bytes());
            assert_eq!(u32_at(&zip, local), 0x0403_4b50);
            assert_eq!(u16_at(&zip, local + 8), 0, "stored");
            let data = local + 30 + u16_at(&zip, local + 26);
            assert_eq!(&zip[data..data + u32_at(&zip, local + 18)], *bytes);
            at += 46 + n;
        }
    }
}
