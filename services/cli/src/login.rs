//! `vmplane login`: check a gateway URL and token, then save them (with the
//! org and project, if given) as a profile of the config file, which becomes
//! the default profile. The token comes from --token or `VMPLANE_TOKEN`,
//! from standard input (`--token-stdin`), from a prompt that does not echo,
//! or, for a gateway on this machine, from the local data dir.

use crate::client::Api;
use crate::config::{self, ConfigFile, DEFAULT_PROFILE, DEFAULT_URL, Profile};
use crate::error::{Error, Result};
use crate::{Global, emit};
use clap::Args;
use std::io::{BufRead, IsTerminal, Read, Write};

/// `vmplane login`.
#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub global: Global,
    /// Read the token from standard input (its first line).
    #[arg(long, conflicts_with = "token")]
    pub token_stdin: bool,
}

/// Run `vmplane login`.
pub async fn run(a: LoginArgs) -> Result<()> {
    let path = config::path().ok_or_else(|| Error::Invalid("cannot tell where the config file goes: set HOME or XDG_CONFIG_HOME".into()))?;
    let mut file = ConfigFile::load(&path)?;
    let g = &a.global;
    let name = g.profile.clone().unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let old = file.profiles.get(&name).cloned().unwrap_or_default();
    let url = g.url.clone().or(old.url.clone()).unwrap_or_else(|| DEFAULT_URL.to_owned());
    let token = match (&g.token, a.token_stdin) {
        (Some(t), _) => t.clone(),
        (None, true) => first_line(&mut std::io::stdin().lock())?,
        (None, false) if std::io::stdin().is_terminal() => prompt_hidden(&format!("Token for {url}: "))?,
        (None, false) => config::local_admin_token(&g.data_dir)
            .filter(|_| config::is_loopback(&url))
            .ok_or_else(|| Error::Invalid("no token: give --token, VMPLANE_TOKEN or --token-stdin".into()))?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Error::Invalid("the token is empty".into()));
    }
    // The token must work there: any caller may list VMs.
    Api::new(&url, Some(token.clone()))?.get("/v1/vms?limit=1").await?;
    let profile = Profile { url: Some(url.clone()), token: Some(token), org: g.org.clone().or(old.org), project: g.project.clone().or(old.project) };
    file.profiles.insert(name.clone(), profile);
    file.default_profile = Some(name.clone());
    file.save(&path)?;
    if g.quiet {
        return Ok(());
    }
    emit(&format!("Logged in to {url}; saved as profile `{name}` (the default) in {}\n", path.display()))
}

/// The first line of `r`, without its line end.
fn first_line(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(Error::io("reading the token from standard input"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Ask on the terminal without echoing what is typed.
fn prompt_hidden(prompt: &str) -> Result<String> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{prompt}");
    let _ = stderr.flush();
    crossterm::terminal::enable_raw_mode().map_err(Error::io("reading the token"))?;
    let read = read_until_enter(&mut std::io::stdin().lock());
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = writeln!(stderr);
    read?.ok_or_else(|| Error::Invalid("interrupted".into()))
}

/// Bytes typed in raw mode up to Enter, with Backspace; `None` on Ctrl-C or Ctrl-D.
fn read_until_enter(r: &mut impl BufRead) -> Result<Option<String>> {
    let mut typed = Vec::new();
    for byte in r.by_ref().bytes() {
        match byte.map_err(Error::io("reading the token"))? {
            b'\r' | b'\n' => return Ok(Some(String::from_utf8_lossy(&typed).into_owned())),
            0x03 | 0x04 => return Ok(None),
            0x7f | 0x08 => {
                typed.pop();
            }
            b => typed.push(b),
        }
    }
    Ok(Some(String::from_utf8_lossy(&typed).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_tokens() {
        assert_eq!(read_until_enter(&mut &b"abc\x7fd\rrest"[..]).unwrap().as_deref(), Some("abd"));
        assert_eq!(read_until_enter(&mut &b"ab\x03"[..]).unwrap(), None);
        assert_eq!(first_line(&mut &b"tok\r\nmore"[..]).unwrap(), "tok");
    }
}
