//! Associated data that binds a ciphertext to the place where it is stored.

/// The place of a ciphertext: its tenant, table, column and record.
///
/// AES-GCM authenticates these values without storing them, so a ciphertext copied to another
/// record, column, table or tenant fails to open. Use stable identifiers such as ids, never a
/// name that an operator may change, because changing any of the four later makes the stored
/// value unreadable. For a value that belongs to no tenant, such as a patient core profile,
/// pass an empty `tenant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    pub tenant: &'a str,
    pub table: &'a str,
    pub column: &'a str,
    pub record: &'a str,
}

impl Aad<'_> {
    /// Appends the canonical encoding: for tenant, table, column and record in that order, the
    /// length in bytes as a u64 big-endian, then the UTF-8 bytes. The length prefixes keep
    /// `("ab", "c")` apart from `("a", "bc")`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for field in [self.tenant, self.table, self.column, self.record] {
            // usize is at most 64 bits wide on every target Rust supports, so this is lossless.
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
    }

    /// Returns the length of [`Aad::encode_into`]'s output.
    pub(crate) fn encoded_len(&self) -> usize {
        4 * 8 + self.tenant.len() + self.table.len() + self.column.len() + self.record.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(aad: &Aad<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        aad.encode_into(&mut out);
        out
    }

    #[test]
    fn encoding_keeps_field_boundaries() {
        let shifted = [
            (
                Aad { tenant: "ab", table: "c", column: "d", record: "e" },
                Aad { tenant: "a", table: "bc", column: "d", record: "e" },
            ),
            (
                Aad { tenant: "a", table: "b", column: "cd", record: "" },
                Aad { tenant: "a", table: "b", column: "c", record: "d" },
            ),
            (
                Aad { tenant: "", table: "ab", column: "c", record: "d" },
                Aad { tenant: "a", table: "b", column: "c", record: "d" },
            ),
        ];

        for (first, second) in shifted {
            assert_ne!(encode(&first), encode(&second), "{first:?} and {second:?}");
        }
    }

    #[test]
    fn encoded_len_matches_encoding() {
        let aad = Aad { tenant: "tenant-1", table: "patients", column: "email", record: "r-9" };

        assert_eq!(aad.encoded_len(), encode(&aad).len());
    }
}
