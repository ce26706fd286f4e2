//! Reading with verification.

use std::io::{self, Read};

use crate::{CasError, Digest};

/// A reader that hashes what passes through it and fails at the end if the content does not
/// match the digest it was opened for.
///
/// The bytes are only trustworthy once `read` has returned `Ok(0)`: a corrupt blob is
/// reported there, as an [`io::ErrorKind::InvalidData`] error whose inner error is a
/// [`CasError::Corrupt`] (reach it with `err.get_ref()` and `downcast_ref`). Reading to the
/// end with [`Read::read_to_end`] or [`io::copy`] does this for you.
#[derive(Debug)]
pub struct VerifiedReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    expected: Digest,
    location: String,
}

impl<R: Read> VerifiedReader<R> {
    /// Wraps `inner`, which should yield the blob `expected`; `location` names it in errors.
    pub fn new(inner: R, expected: Digest, location: impl Into<String>) -> Self {
        VerifiedReader {
            inner,
            hasher: blake3::Hasher::new(),
            expected,
            location: location.into(),
        }
    }

    /// The digest this reader checks against.
    pub fn expected(&self) -> Digest {
        self.expected
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let actual = Digest::from(self.hasher.finalize());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    CasError::Corrupt {
                        digest: self.expected,
                        actual,
                        location: self.location.clone(),
                    },
                ));
            }
        } else {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Turns an error from a [`VerifiedReader`] back into the [`CasError`] it carries, or wraps it.
pub(crate) fn unwrap_io(err: io::Error, action: &'static str, path: &std::path::Path) -> CasError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<CasError>().is_some())
    {
        let inner = err.into_inner().expect("checked above");
        *inner.downcast::<CasError>().expect("checked above")
    } else {
        CasError::io(action, path)(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_content_reads_through() {
        let data = b"some bytes".repeat(1000);
        let mut out = Vec::new();
        VerifiedReader::new(&data[..], Digest::of_bytes(&data), "mem")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn bad_content_fails_at_the_end() {
        let expected = Digest::of_bytes(b"good");
        let err = VerifiedReader::new(&b"evil"[..], expected, "mem")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let cas = unwrap_io(err, "read", "mem".as_ref());
        match cas {
            CasError::Corrupt { digest, actual, .. } => {
                assert_eq!(digest, expected);
                assert_eq!(actual, Digest::of_bytes(b"evil"));
            }
            other => panic!("unexpected {other}"),
        }
    }
}
