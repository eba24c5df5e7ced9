//! A `#cloud-config` document built from structured options (the
//! marketplace's `cloud_init`), rendered as YAML by a YAML serializer, never
//! by pasting strings together, so that what a caller writes in a command
//! stays one command. The guest's cloud-init applies it as user data
//! (`images/debian-minimal/README.md`: `runcmd` runs after boot, with its
//! output on the console).

use crate::spec::SpecError;
use serde::{Deserialize, Serialize};

/// Most `runcmd` lines and packages.
pub const MAX_ITEMS: usize = 100;
/// Longest `runcmd` line.
pub const MAX_COMMAND_LEN: usize = 4096;

/// The cloud-config options vmplane renders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudConfig {
    /// Update the package lists at first boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub package_update: bool,
    /// Upgrade the installed packages at first boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub package_upgrade: bool,
    /// Packages to install at first boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Shell command lines run at first boot, once the system is up, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<String>,
}

impl CloudConfig {
    /// Bounds and character rules: commands are lines of text (newlines and
    /// tabs allowed), packages are Debian-style names with an optional `=version`.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.runcmd.len() > MAX_ITEMS {
            return Err(SpecError { field: "runcmd", reason: format!("at most {MAX_ITEMS} commands") });
        }
        if self.runcmd.iter().any(|c| c.trim().is_empty() || c.len() > MAX_COMMAND_LEN || c.chars().any(|ch| !is_text(ch))) {
            return Err(SpecError {
                field: "runcmd",
                reason: format!("each command must be non-empty text of at most {MAX_COMMAND_LEN} bytes without control characters"),
            });
        }
        if self.packages.len() > MAX_ITEMS || !self.packages.iter().all(|p| is_package(p)) {
            return Err(SpecError {
                field: "packages",
                reason: format!("at most {MAX_ITEMS} package names of a-z, 0-9, '+', '-', '.', optionally `=version`"),
            });
        }
        Ok(())
    }

    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The user data: `#cloud-config` and the options as YAML.
    pub fn render(&self) -> String {
        let yaml = serde_yaml_ng::to_string(self).expect("a cloud-config of strings and booleans always serializes");
        let body = if self.is_empty() { String::new() } else { yaml };
        format!("#cloud-config\n{body}")
    }
}

/// Characters a command may hold: printable text, newlines and tabs; not the
/// Unicode line and paragraph separators or a byte-order mark, which YAML
/// would have to escape in ways small cloud-init parsers do not know.
fn is_text(c: char) -> bool {
    (!c.is_control() || c == '\n' || c == '\t') && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A Debian package name (`nginx`, `g++`, `libc6`), with an optional `=version`.
fn is_package(p: &str) -> bool {
    let (name, version) = p.split_once('=').map_or((p, None), |(n, v)| (n, Some(v)));
    let name_ok = name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let version_ok = version.is_none_or(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:~".contains(&b)));
    name_ok && version_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_marketplace_example() {
        let c = CloudConfig {
            runcmd: vec!["echo 'Hello World'".into(), "apt-get install -y nginx".into()],
            packages: vec!["curl".into(), "git".into()],
            package_update: true,
            package_upgrade: false,
        };
        c.validate().unwrap();
        assert_eq!(c.render(), "#cloud-config\npackage_update: true\npackages:\n- curl\n- git\nruncmd:\n- echo 'Hello World'\n- apt-get install -y nginx\n");
        assert_eq!(CloudConfig::default().render(), "#cloud-config\n");
    }

    #[test]
    fn what_a_command_says_stays_one_command() {
        // Strings YAML would read as something else, or that break a line.
        let tricky = [
            "echo a: b # c",
            "- rm -rf /",
            "true",
            "123",
            "echo \"quoted\" 'and' \\backslash",
            "printf 'x\\n'; echo $HOME && ls | wc -l",
            "cat <<EOF\nline two\nEOF",
            "\techo tab",
            "@weird `back` {brace} [list] *star &amp !bang %pct",
            "~",
            "null",
            "echo ünïcödé",
        ];
        let c = CloudConfig { runcmd: tricky.iter().map(|s| (*s).to_owned()).collect(), ..CloudConfig::default() };
        c.validate().unwrap();
        let text = c.render();
        let back: CloudConfig = serde_yaml_ng::from_str(text.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        assert_eq!(back, c, "{text}");
    }

    #[test]
    fn bounds() {
        let bad_cmds =
            [vec![String::new()], vec!["a\u{7}b".into()], vec!["a\u{2028}b".into()], vec!["x".repeat(MAX_COMMAND_LEN + 1)], vec!["ls".into(); MAX_ITEMS + 1]];
        for runcmd in bad_cmds {
            assert_eq!(CloudConfig { runcmd, ..CloudConfig::default() }.validate().unwrap_err().field, "runcmd");
        }
        for bad in ["", "A", "nginx; rm -rf /", "-x", "curl=", "a b"] {
            let c = CloudConfig { packages: vec![bad.into()], ..CloudConfig::default() };
            assert_eq!(c.validate().unwrap_err().field, "packages", "{bad:?}");
        }
        CloudConfig { packages: vec!["g++".into(), "libc6=2.36-9+deb12u4".into(), "python3.11".into()], ..CloudConfig::default() }.validate().unwrap();
    }
}
