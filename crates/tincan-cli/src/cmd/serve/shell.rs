//! The script handed to `sh -c` for a handler command.
//!
//! dash (Debian's `/bin/sh`) forks a child even for the last command of a `-c` script, so
//! `sh -c cat` costs two process starts. For a command that is plainly one simple command, the
//! script becomes `exec COMMAND`: the shell still parses and expands it exactly as before, then
//! replaces itself with the program instead of forking it. Same process group, same stdin,
//! stdout, environment and exit status, one process start fewer per message.
//!
//! Anything that might be more than one simple command, or that `exec` would change, is left as
//! it is: operators and grouping (`; & | ( ) { } < > !` and newlines), substitutions (`$`, `` ` ``),
//! escapes and comments (`\`, `#`), a leading assignment (`FOO=1 cmd`), and reserved words or
//! builtins that exist only inside the shell (`cd`, `export`, `if`, ...).

use std::borrow::Cow;

/// Words `exec` would break: reserved words and builtins with no program of the same name.
const SHELL_ONLY: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while", "break", ":", ".", "continue", "eval", "exec", "exit", "export", "readonly",
    "return", "set", "shift", "times", "trap", "unset", "cd", "alias", "unalias", "bg", "fg",
    "jobs", "read", "type", "ulimit", "umask", "wait", "getopts", "hash", "command", "local",
    "source",
];

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
            ("echo hi", "exec echo hi"),
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
        ] {
            assert_eq!(script(cmd), cmd, "{cmd:?}");
        }
    }
}
