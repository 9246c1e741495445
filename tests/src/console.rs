//! A guest's serial console output and the `@@pvio key value` result lines in it.
//!
//! The guest's `/init` ([`crate::initramfs`]) prints `@@pvio booted <uptime>` once set up, the
//! script's own markers, then `@@pvio exit <status>`. Kernel messages may interleave with them
//! and the firmware prints terminal escapes, so a marker is found anywhere in a line.

use crate::initramfs::MARKER;

/// What a guest's console showed does not match what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script never printed marker `key`.
    #[error("the guest printed no `{MARKER} {key}` line; console:\n{console}")]
    NoMarker {
        /// The missing key.
        key: String,
        /// The whole console output.
        console: String,
    },
    /// The script did not finish with status 0 (or the guest never reached its end).
    #[error("the guest script did not exit 0 (exit marker: {status:?}); console:\n{console}")]
    ScriptFailed {
        /// The value of the `exit` marker, if any.
        status: Option<String>,
        /// The whole console output.
        console: String,
    },
}

/// The text a guest wrote to its serial console (carriage returns removed).
#[derive(Debug, Clone, Default)]
pub struct Console {
    text: String,
}

impl Console {
    /// Wraps console output, without carriage returns and terminal escapes.
    pub fn new(raw: &str) -> Self {
        Self {
            text: strip_escapes(raw).replace('\r', ""),
        }
    }

    /// The whole output.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The values of every `@@pvio <key> <value>` line, in order (value trimmed; empty when the
    /// line has only the key).
    pub fn markers(&self, key: &str) -> Vec<&str> {
        self.text
            .lines()
            .filter_map(|line| {
                let (_, after) = line.split_once(MARKER)?;
                let value = after.strip_prefix(' ')?.strip_prefix(key)?;
                if value.is_empty() {
                    Some(value)
                } else {
                    value.strip_prefix(' ').map(str::trim)
                }
            })
            .collect()
    }

    /// The value of the last `@@pvio <key> ...` line.
    ///
    /// # Errors
    /// [`Error::NoMarker`] (with the console) when there is none.
    pub fn marker(&self, key: &str) -> Result<&str, Error> {
        self.markers(key).pop().ok_or_else(|| Error::NoMarker {
            key: key.to_string(),
            console: self.text.clone(),
        })
    }

    /// Checks that the script ran to its end with status 0.
    ///
    /// # Errors
    /// [`Error::ScriptFailed`] (with the console) otherwise.
    pub fn check_exit(&self) -> Result<(), Error> {
        match self.markers("exit").pop() {
            Some("0") => Ok(()),
            status => Err(Error::ScriptFailed {
                status: status.map(str::to_string),
                console: self.text.clone(),
            }),
        }
    }
}

/// `text` without terminal escape sequences (the firmware's `ESC c` would reset the terminal
/// the console is echoed to): CSI sequences `ESC [ ... final` and two-byte `ESC x`.
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameter and intermediate bytes, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str =
        "\x1b[2JSeaBIOS\r\n@@pvio booted 2.13\r\n[ 3.1] virtio_blk virtio0: [vda]\r\n\
                          @@pvio sha256 abc def\r\nnoise @@pvio sha256 fff\r\n@@pvio sha256x no\r\n\
                          @@pvio flag\r\n@@pvio exit 0\r\n";

    #[test]
    fn finds_markers_among_other_output() {
        let c = Console::new(OUTPUT);
        assert_eq!(c.markers("sha256"), ["abc def", "fff"]);
        assert_eq!(c.marker("sha256").unwrap(), "fff");
        assert_eq!(c.marker("booted").unwrap(), "2.13");
        assert_eq!(c.marker("flag").unwrap(), "");
        assert!(c.check_exit().is_ok());
        let err = c.marker("missing").unwrap_err().to_string();
        assert!(
            err.contains("@@pvio missing") && err.contains("SeaBIOS"),
            "{err}"
        );
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2JSeaBIOS \x1b[0mok"),
            "SeaBIOS ok"
        );
        assert_eq!(strip_escapes("plain [text]"), "plain [text]");
        assert_eq!(strip_escapes("cut \x1b"), "cut ");
    }

    #[test]
    fn a_failed_or_missing_exit_is_an_error() {
        assert!(Console::new("@@pvio exit 1\n").check_exit().is_err());
        assert!(Console::new("@@pvio booted 1\n").check_exit().is_err());
        assert!(Console::new("@@pvio exit 10\n").check_exit().is_err());
    }
}
