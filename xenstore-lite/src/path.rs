//! Node paths: validation and canonical form (C xenstored `canonicalize`, xenstore.txt
//! "Paths").
//!
//! A path is absolute (`/local/domain/1/device/vbd/51712/state`) or relative to the caller's
//! home `/local/domain/<domid>`. Allowed characters are `[A-Za-z0-9-/_@]`; no `//`, no
//! trailing `/` (except the root `/`), at most [`XENSTORE_ABS_PATH_MAX`] bytes. Names
//! starting with `@` are the special watch paths `@introduceDomain` and `@releaseDomain`.

use crate::wire::{Errno, XENSTORE_ABS_PATH_MAX};

/// Special path whose watchers hear of every XS_INTRODUCE.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Special path whose watchers hear of every domain release.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// The home of a domain: `/local/domain/<domid>`.
pub fn domain_home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Whether `path` is one of the special `@` paths.
pub fn is_special(path: &str) -> bool {
    path == INTRODUCE_DOMAIN || path == RELEASE_DOMAIN
}

/// The canonical absolute form of `raw` for a caller of domain `domid`.
///
/// `allow_special` admits `@introduceDomain` and `@releaseDomain` (watches and permissions
/// on them); `rel_max` is the limit in bytes for the part below `/local/domain/<n>/` (the
/// path-length quota of unprivileged domains, `None` for none).
///
/// # Errors
/// `EINVAL` for a bad character, `//`, a trailing `/`, an unknown `@` name, a path over
/// 3072 bytes or over `rel_max`.
pub fn canonicalize(
    domid: u32,
    raw: &str,
    allow_special: bool,
    rel_max: Option<usize>,
) -> Result<String, Errno> {
    if !raw.bytes().all(valid_char) {
        return Err(Errno::EINVAL);
    }
    if raw.starts_with('@') {
        return if allow_special && is_special(raw) {
            Ok(raw.to_owned())
        } else {
            Err(Errno::EINVAL)
        };
    }
    let abs = if raw.starts_with('/') {
        raw.to_owned()
    } else {
        format!("{}/{raw}", domain_home(domid))
    };
    let trailing = abs.len() > 1 && abs.ends_with('/');
    if trailing || abs.contains("//") || abs.len() > XENSTORE_ABS_PATH_MAX || abs.contains('@') {
        return Err(Errno::EINVAL);
    }
    if let Some(max) = rel_max {
        if abs.len() - local_prefix_len(&abs) > max {
            return Err(Errno::EINVAL);
        }
    }
    Ok(abs)
}

/// Length of a leading `/local/domain/<n>/` in `path`, 0 when there is none.
fn local_prefix_len(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    "/local/domain/".len() + digits + 1
}

/// The parent of a canonical path: `/a/b` → `/a`, `/a` → `/`. `None` for `/` and `@` paths.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" || path.starts_with('@') {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component of a canonical path (`/a/b` → `b`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The path of child `name` under `dir`.
pub fn child(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` equals `ancestor` or lies below it (`/` is above every normal path).
pub fn is_at_or_below(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Number of components `path` lies below `ancestor` (0 when equal). Only meaningful when
/// [`is_at_or_below`] holds.
pub fn depth_below(path: &str, ancestor: &str) -> usize {
    let rest = if ancestor == "/" {
        &path[1..]
    } else {
        &path[ancestor.len()..]
    };
    rest.split('/').filter(|c| !c.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_go_under_the_domain_home() {
        assert_eq!(
            canonicalize(3, "device/vbd", false, None).unwrap(),
            "/local/domain/3/device/vbd"
        );
        assert_eq!(canonicalize(0, "/tool", false, None).unwrap(), "/tool");
        assert_eq!(canonicalize(0, "/", false, None).unwrap(), "/");
    }

    #[test]
    fn bad_paths_are_einval() {
        for bad in [
            "/a//b", "/a/", "", "/a b", "/a\u{e9}", "/a.b", "@foo", "/x@y",
        ] {
            assert_eq!(
                canonicalize(0, bad, true, None),
                Err(Errno::EINVAL),
                "{bad:?}"
            );
        }
        assert_eq!(
            canonicalize(0, INTRODUCE_DOMAIN, false, None),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            canonicalize(0, RELEASE_DOMAIN, true, None).unwrap(),
            RELEASE_DOMAIN
        );
        let long = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
        assert_eq!(canonicalize(0, &long, false, None), Err(Errno::EINVAL));
        let ok = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert!(canonicalize(0, &ok, false, None).is_ok());
    }

    #[test]
    fn relative_length_quota_counts_below_the_home() {
        let rel = "a".repeat(10);
        assert!(canonicalize(5, &rel, false, Some(10)).is_ok());
        assert_eq!(
            canonicalize(5, &format!("{rel}b"), false, Some(10)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            canonicalize(5, "/tool/abcdefghijk", false, Some(10)),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn tree_relations() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert!(is_at_or_below("/ab", "/"));
        assert!(!is_at_or_below(INTRODUCE_DOMAIN, "/"));
        assert_eq!(depth_below("/a/b/c", "/a"), 2);
        assert_eq!(depth_below("/a", "/"), 1);
        assert_eq!(depth_below("/a", "/a"), 0);
    }
}
