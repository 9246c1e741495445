//! `--print-capabilities`: the JSON document of vhost-user.rst "Back-end program conventions"
//! (schema in QEMU's `docs/interop/vhost-user.json`): `{"type": TYPE, "features": [...]}`.

use std::io::Write;
use std::process::ExitCode;

/// The document for a back-end of `kind` ("block", "net", ...) with `features`.
pub fn json(kind: &str, features: &[&str]) -> String {
    serde_json::json!({ "type": kind, "features": features }).to_string()
}

/// Prints [`json`] on stdout; failure to write (closed stdout) is a failing exit code.
pub fn print(kind: &str, features: &[&str]) -> ExitCode {
    match writeln!(std::io::stdout(), "{}", json(kind, features)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_shape() {
        let v: serde_json::Value = serde_json::from_str(&super::json("net", &[])).unwrap();
        assert_eq!(v["type"], "net");
        assert_eq!(v["features"], serde_json::json!([]));
    }
}
