//! How a handler command is started, with `sh -c` semantics and as few process starts as they
//! allow.
//!
//! dash (Debian's `/bin/sh`) forks a child even for the last command of a `-c` script, so
//! `sh -c cat` costs two process starts, and the shell itself a third of a turn. Two shortcuts,
//! both with exactly what `sh -c COMMAND` would do:
//!
//! - [`direct_argv`]: a command that is only plain words (no quoting, expansion, globbing,
//!   operators) is a simple command whose fields are those words, so POSIX `sh` would search
//!   `PATH` for the first word and execute it with the words as arguments. tincan does that itself.
//!   If that start fails (not found, not executable, a script without `#!`), the command goes
//!   through `sh -c` after all, which gives the shell's own error or fallback.
//! - [`script`]: otherwise, a command that is still one simple command becomes `exec COMMAND`:
//!   the shell parses and expands it as before, then replaces itself with the program.
//!
//! Same process group, stdin, stdout, environment and exit status either way.
//!
//! [`locate`] remembers where `PATH` had a program, as a shell's command hash table does (dash and
//! bash `hash`): a failed `execve` for every `PATH` directory before the right one cost a turn
//! about 0.08 ms with an eight-entry `PATH` (BENCHMARKS.md). A program that is gone from there
//! fails to start, is forgotten ([`forget`]), and the command runs through `sh -c`, which searches
//! again.
//!
//! Anything that might be more than one simple command, or that `exec` would change, is left as
//! it is: operators and grouping (`; & | ( ) { } < > !` and newlines), substitutions (`$`, `` ` ``),
//! escapes and comments (`\`, `#`), a leading assignment (`FOO=1 cmd`), and reserved words or
//! builtins that exist only inside the shell (`cd`, `export`, `if`, ...).

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

/// Programs found on `PATH`, by name.
static FOUND: LazyLock<Mutex<HashMap<String, PathBuf>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn found() -> std::sync::MutexGuard<'static, HashMap<String, PathBuf>> {
    // A map of paths cannot be left half-updated by a panic.
    FOUND.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where `sh` would find `program`: itself if it names a path (has a `/`), else the first
/// executable regular file of that name in a `PATH` directory (an empty entry is the current
/// directory), remembered for the next call. `None`: not found (the caller lets `sh` report it).
pub fn locate(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    if let Some(p) = found().get(program) {
        return Some(p.clone());
    }
    let path = std::env::var_os("PATH")?;
    let hit = std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })?;
    found().insert(program.to_string(), hit.clone());
    Some(hit)
}

/// Drops what [`locate`] remembered for `program` (it failed to start from there).
pub fn forget(program: &str) {
    found().remove(program);
}

/// Makes [`locate`] answer `path` for `program` (tests: a remembered path that went away).
#[cfg(test)]
pub fn remember(program: &str, path: &Path) {
    found().insert(program.to_string(), path.to_path_buf());
}

/// Words `exec` would change: reserved words, builtins with no program of the same name, and
/// builtins whose program twin behaves differently (dash's `echo` is not coreutils' `echo`).
const SHELL_ONLY: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while", "break", ":", ".", "continue", "eval", "exec", "exit", "export", "readonly",
    "return", "set", "shift", "times", "trap", "unset", "cd", "alias", "unalias", "bg", "fg",
    "jobs", "read", "type", "ulimit", "umask", "wait", "getopts", "hash", "command", "local",
    "source", "echo", "printf", "test", "[", "true", "false", "kill", "pwd",
];

/// The argument vector `sh -c command` would execute, when `command` is nothing but plain words:
/// ASCII letters, digits and `_ . / = : , @ % + -` separated by spaces or tabs, and its first word
/// neither an assignment nor a shell word (see [`SHELL_ONLY`]). `None` means: use the shell.
pub fn direct_argv(command: &str) -> Option<Vec<&str>> {
    let plain = command
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " \t_./=:,@%+-".contains(c));
    let argv: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = argv.first()?;
    (plain && !first.contains('=') && !SHELL_ONLY.contains(first)).then_some(argv)
}

/// `exec COMMAND` when `command` is one simple command, else `command` unchanged.
pub fn script(command: &str) -> Cow<'_, str> {
    let trimmed = command.trim();
    let Some(first) = trimmed.split_whitespace().next() else {
        return Cow::Borrowed(command);
    };
    let plain = trimmed
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " \t_./=:,@%+-'\"*?[]~^".contains(c));
    if plain && !first.contains('=') && !SHELL_ONLY.contains(&first) {
        Cow::Owned(format!("exec {trimmed}"))
    } else {
        Cow::Borrowed(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_found_on_path_once_and_remembered() {
        let sh = locate("sh").expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(found().get("sh"), Some(&sh), "remembered");
        assert_eq!(locate("sh"), Some(sh));
        // A path is used as it is, and never remembered.
        assert_eq!(locate("./x/tool"), Some(PathBuf::from("./x/tool")));
        assert!(!found().contains_key("./x/tool"));
        assert_eq!(locate("no-such-program-tincan-locate"), None);
        forget("sh");
        assert!(!found().contains_key("sh"));
    }

    #[test]
    fn plain_words_are_started_directly() {
        assert_eq!(direct_argv("cat"), Some(vec!["cat"]));
        assert_eq!(
            direct_argv("  ./handlers/claude\t--model sonnet-4 "),
            Some(vec!["./handlers/claude", "--model", "sonnet-4"])
        );
        assert_eq!(direct_argv("tr a-z A-Z"), Some(vec!["tr", "a-z", "A-Z"]));
        for cmd in [
            "",
            "  ",
            "python3 bot.py 'a b'",
            "cat *.txt",
            "cat ~/x",
            "FOO=1 cat",
            "echo hi",
            "cd /tmp",
            "cat; echo",
            "cat $X",
            "true",
        ] {
            assert_eq!(direct_argv(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn one_simple_command_is_execed() {
        for (cmd, want) in [
            ("cat", "exec cat"),
            (
                "  ./handlers/claude --model sonnet ",
                "exec ./handlers/claude --model sonnet",
            ),
            (
                "python3 bot.py 'a b' \"c\"",
                "exec python3 bot.py 'a b' \"c\"",
            ),
            ("tr a-z A-Z", "exec tr a-z A-Z"),
            ("cat *.md", "exec cat *.md"),
        ] {
            assert_eq!(script(cmd), want, "{cmd}");
        }
    }

    #[test]
    fn anything_more_is_left_to_the_shell() {
        for cmd in [
            "",
            "   ",
            "cat; echo done",
            "cat | tr a-z A-Z",
            "cat && true",
            "sleep 1 &",
            "cat > out.txt",
            "(cat)",
            "{ cat; }",
            "echo $HOME",
            "echo `date`",
            "echo a\\ b",
            "cat # comment",
            "FOO=1 cat",
            "cd /tmp",
            "export X",
            "if true",
            "exec cat",
            "cat\necho two",
            "! false",
            "echo -e x",
        ] {
            assert_eq!(script(cmd), cmd, "{cmd:?}");
        }
    }
}
