//! The semantic rules' building blocks: shapes and limits checked by hand (no regex
//! engine), each returning what is wrong in words.

use std::io;

use serde::Serialize;
use serde_json::Value;

use super::{CloudTarget, Problems, at};

/// The most node pools in one workspace.
pub(super) const MAX_NODE_POOLS: usize = 32;
/// The most labels on one node pool.
pub(super) const MAX_LABELS: usize = 64;
/// The most override tags (AWS allows 50 per resource).
pub(super) const MAX_TAGS: usize = 50;
/// The largest `overrides.parameters`, in bytes of JSON.
pub(super) const MAX_PARAMETERS_BYTES: usize = 64 * 1024;
/// The most manifest documents in one stack.
pub(super) const MAX_DOCUMENTS: usize = 500;
/// The largest Helm values, manifest set or Terraform variables, in bytes of JSON
/// (the size limit of the Secret in which Helm stores a release).
pub(super) const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The longest Helm or Terraform source, in characters.
const MAX_SOURCE_CHARS: usize = 2048;

/// Whether `region` has the shape `cloud` uses; otherwise what was expected.
pub(super) fn region_shape(cloud: &CloudTarget, region: &str) -> Result<(), &'static str> {
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match cloud {
        // [a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+
        CloudTarget::Aws { .. } => {
            let parts: Vec<&str> = region.split('-').collect();
            let (head, qualifier, area, number) = match parts[..] {
                [head, area, number] => (head, None, area, number),
                [head, qualifier, area, number] => (head, Some(qualifier), area, number),
                _ => ("", None, "", ""),
            };
            let qualifier_ok = qualifier.is_none_or(|q| {
                q == "gov"
                    || q.strip_prefix("iso").is_some_and(|rest| {
                        rest.len() <= 1 && rest.bytes().all(|b| b.is_ascii_lowercase())
                    })
            });
            if head.len() == 2 && lower(head) && qualifier_ok && lower(area) && digits(number) {
                Ok(())
            } else {
                Err("an AWS region, such as us-east-1 or us-gov-west-1")
            }
        }
        // [a-z]+-[a-z]+\d+
        CloudTarget::Gcp { .. } => {
            let ok = region.split_once('-').is_some_and(|(area, rest)| {
                let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
                lower(area) && letters > 0 && digits(&rest[letters..])
            });
            if ok {
                Ok(())
            } else {
                Err("a GCP region, such as europe-west1 or us-central1")
            }
        }
        CloudTarget::Azure { .. } => {
            if region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                Ok(())
            } else {
                Err("an Azure region, such as westeurope or eastus2 (lowercase letters and digits)")
            }
        }
        CloudTarget::Simulated => Ok(()),
    }
}

/// `[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`, at most 63 characters: the name part of
/// a Kubernetes label key, and a non-empty label value.
fn qualified_name(what: &str, s: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if s.len() > 63 {
        return Err(format!(
            "the {what} is {} characters long; the limit is 63",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(alnum(c) || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the {what} contains {c:?}; allowed: ASCII letters, digits, '.', '_', '-'"
        ));
    }
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Err(format!(
            "the {what} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS subdomain as Kubernetes checks it: dot-separated RFC 1123 labels
/// (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`), at most 253 characters.
fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!(
            "the prefix is {} characters long; the limit is 253",
            s.chars().count()
        ));
    }
    let label_ok = |l: &str| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
    };
    if s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("the prefix is not a DNS subdomain (lowercase letters, digits, '-' and '.', such as example.com)".into())
    }
}

/// A Kubernetes label key: `[prefix/]name`.
pub(super) fn label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix)?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    qualified_name("name part", name)
}

/// A Kubernetes label value: empty, or a qualified name.
pub(super) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Ok(())
    } else {
        qualified_name("value", value)
    }
}

/// A cloud tag key of an override.
pub(super) fn tag_key(key: &str) -> Result<(), String> {
    let len = key.chars().count();
    if !(1..=128).contains(&len) {
        return Err(format!(
            "the key is {len} characters long; allowed: 1 to 128"
        ));
    }
    if key
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("cogrion"))
    {
        return Err(
            "keys starting with \"cogrion\" are reserved for the tags Cogrion sets itself".into(),
        );
    }
    Ok(())
}

/// A cloud tag value of an override.
pub(super) fn tag_value(value: &str) -> Result<(), String> {
    let len = value.chars().count();
    if len > 256 {
        return Err(format!(
            "the value is {len} characters long; the limit is 256"
        ));
    }
    Ok(())
}

/// A template parameter name: `[a-z][a-z0-9._-]*`, 1 to 128 characters.
pub(super) fn parameter_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if !(1..=128).contains(&len) {
        return Err(format!(
            "the name is {len} characters long; allowed: 1 to 128"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("the name must start with a lowercase letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the name contains {c:?}; allowed: lowercase letters, digits, '.', '_', '-'"
        ));
    }
    Ok(())
}

fn source_length(source: &str) -> Result<(), String> {
    let len = source.chars().count();
    if len == 0 {
        return Err("the source must not be empty".into());
    }
    if len > MAX_SOURCE_CHARS {
        return Err(format!(
            "the source is {len} characters long; the limit is {MAX_SOURCE_CHARS}"
        ));
    }
    Ok(())
}

/// `[a-z0-9]([a-z0-9._-]*[a-z0-9])?`: a Helm repository or chart name.
fn dns_ish(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
}

/// Where a Helm chart comes from.
pub(super) fn helm_source(source: &str) -> Result<(), String> {
    source_length(source)?;
    if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the source must not contain whitespace or control characters".into());
    }
    for scheme in ["oci://", "https://", "http://"] {
        if let Some(rest) = source.strip_prefix(scheme) {
            return if rest.is_empty() {
                Err(format!("nothing follows {scheme:?}"))
            } else {
                Ok(())
            };
        }
    }
    if ["./", "../", "/"].iter().any(|p| source.starts_with(p)) {
        return Ok(());
    }
    match source.split_once('/') {
        Some((repo, chart)) if dns_ish(repo) && dns_ish(chart) => Ok(()),
        _ => Err(format!(
            "{:?} is not a chart source: expected oci://…, https://…, http://…, a local path \
             starting with ./, ../ or /, or repo/chart",
            super::truncated(source, 64)
        )),
    }
}

/// A Helm chart version: 1 to 64 characters of `[A-Za-z0-9.+_-]`.
pub(super) fn helm_version(version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err("the version must not be empty".into());
    }
    let len = version.chars().count();
    if len > 64 {
        return Err(format!(
            "the version is {len} characters long; the limit is 64"
        ));
    }
    if let Some(c) = version
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-')))
    {
        return Err(format!(
            "the version contains {c:?}; allowed: ASCII letters, digits, '.', '+', '_', '-'"
        ));
    }
    Ok(())
}

/// Where a Terraform module comes from.
pub(super) fn terraform_source(source: &str) -> Result<(), String> {
    source_length(source)
}

/// A Terraform variable name: `[A-Za-z_][A-Za-z0-9_-]*`, at most 64 characters.
pub(super) fn terraform_variable(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the variable name must not be empty".into());
    }
    let len = name.chars().count();
    if len > 64 {
        return Err(format!(
            "the variable name is {len} characters long; the limit is 64"
        ));
    }
    let ok = name.char_indices().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || (i > 0 && (c.is_ascii_digit() || c == '-'))
    });
    if ok {
        Ok(())
    } else {
        Err(
            "a variable name is ASCII letters, digits, '_' and '-', starting with a letter or '_'"
                .into(),
        )
    }
}

/// One manifest document: an object with `apiVersion`, `kind` and `metadata.name`.
pub(super) fn check_manifest(document: &Value, base: &str, p: &mut Problems) {
    let Value::Object(object) = document else {
        p.push(base, "a document must be a JSON object");
        return;
    };
    let non_empty_string =
        |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    for key in ["apiVersion", "kind"] {
        if !non_empty_string(object.get(key)) {
            p.push(at(base, key), "required: a non-empty string");
        }
    }
    if !non_empty_string(object.get("metadata").and_then(|m| m.get("name"))) {
        p.push(at(base, "metadata.name"), "required: a non-empty string");
    }
}

/// Records a problem at `path` when `value` is more than [`MAX_PAYLOAD_BYTES`] of
/// JSON.
pub(super) fn check_payload_size(value: &impl Serialize, path: &str, p: &mut Problems) {
    let size = json_len(value);
    if size > MAX_PAYLOAD_BYTES {
        p.push(
            path,
            format!("{size} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES} (1 MiB)"),
        );
    }
}

/// The length of `value`'s compact JSON, counted without building the text.
pub(super) fn json_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serialising JSON values and string-keyed maps cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}
