//! The configuration reference: `docs/configuration.md` made from the annotated `osteo.toml`
//! (every key, its default and the comment above it), and the checks that keep the two and the
//! settings code in step — every key of [`Settings`](super::Settings) appears in `osteo.toml`
//! and nothing else does, and the page is what `osteo.toml` makes.

/// The reference page of `osteo_toml` (an annotated configuration: comment lines describe the
/// key or keys that follow them; `[section]` and `[[array]]` headers group them).
pub fn markdown(osteo_toml: &str) -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Every key of `osteo serve`'s configuration, its default and what it does. This page is \
         generated from the annotated [`osteo.toml`](../osteo.toml) at the repository root, \
         which loads to exactly the built-in defaults; the test suite checks that both list \
         every key the server reads and nothing else (regenerate with `UPDATE_DOCS=1 cargo test \
         -p osteo-server config_reference`).\n",
    );
    let mut lines = osteo_toml.lines().peekable();
    // The file's opening comment (up to the first blank line) is the page's introduction.
    let mut intro = Vec::new();
    while let Some(l) = lines.next_if(|l| l.starts_with('#')) {
        intro.push(l.trim_start_matches('#').trim());
    }
    out.push_str(&format!("\n{}\n", paragraphs(&intro)));
    let mut section = String::new();
    let mut comment: Vec<&str> = Vec::new();
    let mut last_comment = String::new();
    for line in lines {
        let t = line.trim();
        if t.is_empty() {
            comment.clear();
        } else if let Some(c) = t.strip_prefix('#') {
            comment.push(c.trim());
        } else if t.starts_with('[') {
            let name = t.trim_matches(['[', ']']);
            if name != section {
                out.push_str(&format!(
                    "\n## `{t}`\n\n{}| key | default | what it does |\n|---|---|---|\n",
                    if comment.is_empty() {
                        String::new()
                    } else {
                        format!("{}\n\n", paragraphs(&comment))
                    }
                ));
                section = name.to_string();
            }
            comment.clear();
            last_comment.clear();
        } else if let Some((key, value)) = t.split_once(" = ") {
            let text = if comment.is_empty() {
                if last_comment.is_empty() {
                    String::new()
                } else {
                    "As the key above.".to_string()
                }
            } else {
                last_comment = comment.join(" ");
                last_comment.clone()
            };
            comment.clear();
            out.push_str(&format!(
                "| `{section}.{key}` | `{}` | {} |\n",
                cell(value),
                cell(&text)
            ));
        }
    }
    out
}

/// Comment lines joined into paragraphs (an empty comment line separates two).
fn paragraphs(lines: &[&str]) -> String {
    lines
        .split(|l| l.is_empty())
        .map(|p| p.join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The dotted paths of every leaf value of `v` (tables descended into; arrays are leaves).
pub fn leaf_keys(v: &toml::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::path::Path;

    fn root() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// The keys of a configuration, `[[models]]`, `[[shadow]]` and `[[canary]]` entries apart
    /// (lists, not keys).
    fn keys(v: &toml::Value) -> Vec<String> {
        leaf_keys(v)
            .into_iter()
            .filter(|k| {
                ["models", "shadow", "canary"]
                    .iter()
                    .all(|l| k != l && !k.starts_with(&format!("{l}.")))
            })
            .collect()
    }

    #[test]
    fn config_reference_osteo_toml_names_every_key_the_server_reads_and_no_other() {
        let text = std::fs::read_to_string(root().join("osteo.toml")).expect("osteo.toml");
        let file: toml::Value = toml::from_str(&text).expect("osteo.toml parses");
        let defaults = toml::Value::try_from(Settings::default()).expect("settings serialise");
        let (documented, read) = (keys(&file), keys(&defaults));
        let missing: Vec<&String> = read.iter().filter(|k| !documented.contains(k)).collect();
        let unknown: Vec<&String> = documented.iter().filter(|k| !read.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "keys osteo.toml does not document: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "keys in osteo.toml the server does not read: {unknown:?}"
        );
    }

    #[test]
    fn config_reference_docs_configuration_md_is_generated_from_osteo_toml() {
        let text = std::fs::read_to_string(root().join("osteo.toml")).expect("osteo.toml");
        let page = markdown(&text);
        let path = root().join("docs/configuration.md");
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &page).expect("write docs/configuration.md");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/configuration.md is not what osteo.toml makes: regenerate it with \
             UPDATE_DOCS=1 cargo test -p osteo-server config_reference"
        );
        let file: toml::Value = toml::from_str(&text).expect("osteo.toml parses");
        for key in keys(&file) {
            assert!(
                page.contains(&format!("`{key}`")),
                "{key} missing from the page"
            );
        }
    }
}
