//! Parsing of SMTP command lines (without their CRLF) into [`Command`]s. Pure functions: no
//! session state, so every malformed input is a value, never a panic.

/// A syntax problem, answered with the contained reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SyntaxError(pub &'static str);

const BAD_ARGS: SyntaxError = SyntaxError("501 5.5.4 syntax error in parameters or arguments");
const NO_ARGS: SyntaxError = SyntaxError("501 5.5.4 this command takes no arguments");
const BAD_PATH: SyntaxError = SyntaxError("501 5.1.7 bad address syntax");

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    Mail(Path<'a>),
    Rcpt(Path<'a>),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(&'a str),
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    Unknown,
}

/// The `<address> params...` part of MAIL and RCPT.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Path<'a> {
    /// The address between the angle brackets (source route removed); may be empty.
    pub address: &'a str,
    /// The ESMTP parameters as written (`KEY` or `KEY=VALUE`).
    pub params: Vec<&'a str>,
}

impl<'a> Command<'a> {
    /// Parses one command line.
    pub(super) fn parse(line: &'a str) -> Result<Self, SyntaxError> {
        // Trailing blanks are a common client sloppiness and carry no meaning.
        let line = line.trim_end_matches([' ', '\t']);
        let (verb, args) = match line.split_once(' ') {
            Some((verb, args)) => (verb, args.trim_start_matches(' ')),
            None => (line, ""),
        };
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        let no_args = |cmd: Command<'a>| {
            if args.is_empty() {
                Ok(cmd)
            } else {
                Err(NO_ARGS)
            }
        };
        if is("EHLO") || is("HELO") {
            let domain = args.split(' ').next().unwrap_or_default();
            if domain.is_empty() {
                return Err(SyntaxError("501 5.5.4 domain name required"));
            }
            return Ok(if is("EHLO") {
                Command::Ehlo(domain)
            } else {
                Command::Helo(domain)
            });
        }
        if is("MAIL") {
            return Ok(Command::Mail(parse_path(args, "FROM:")?));
        }
        if is("RCPT") {
            let path = parse_path(args, "TO:")?;
            if path.address.is_empty() {
                return Err(SyntaxError("501 5.1.3 empty recipient address"));
            }
            return Ok(Command::Rcpt(path));
        }
        if is("DATA") {
            return no_args(Command::Data);
        }
        if is("BDAT") {
            return parse_bdat(args);
        }
        if is("RSET") {
            return no_args(Command::Rset);
        }
        if is("NOOP") {
            return Ok(Command::Noop);
        }
        if is("QUIT") {
            return no_args(Command::Quit);
        }
        if is("VRFY") {
            if args.is_empty() {
                return Err(BAD_ARGS);
            }
            return Ok(Command::Vrfy(args));
        }
        if is("EXPN") {
            return Ok(Command::Expn);
        }
        if is("HELP") {
            return Ok(Command::Help);
        }
        if is("STARTTLS") {
            return no_args(Command::StartTls);
        }
        if is("AUTH") {
            let mut parts = args.split(' ').filter(|p| !p.is_empty());
            let mechanism = parts.next().ok_or(BAD_ARGS)?;
            let initial = parts.next();
            if parts.next().is_some() {
                return Err(BAD_ARGS);
            }
            return Ok(Command::Auth { mechanism, initial });
        }
        Ok(Command::Unknown)
    }
}

/// Parses `FROM:<addr> params` / `TO:<addr> params`.
fn parse_path<'a>(args: &'a str, keyword: &str) -> Result<Path<'a>, SyntaxError> {
    let head = args.get(..keyword.len()).ok_or(BAD_ARGS)?;
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(BAD_ARGS);
    }
    // RFC 5321 has no space after the colon, but many clients send one.
    let rest = args[keyword.len()..].trim_start_matches(' ');
    let rest = rest.strip_prefix('<').ok_or(BAD_PATH)?;
    let close = rest.find('>').ok_or(BAD_PATH)?;
    let mut address = &rest[..close];
    let after = &rest[close + 1..];
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(BAD_PATH);
    }
    // Obsolete source route `@a,@b:user@d`: only the mailbox after ':' matters.
    if address.starts_with('@') {
        address = address.split_once(':').ok_or(BAD_PATH)?.1;
    }
    if address
        .chars()
        .any(|c| c.is_control() || c == ' ' || c == '<')
    {
        return Err(BAD_PATH);
    }
    let params = after.split(' ').filter(|p| !p.is_empty()).collect();
    Ok(Path { address, params })
}

/// Parses `BDAT <size> [LAST]`.
fn parse_bdat(args: &str) -> Result<Command<'_>, SyntaxError> {
    let mut parts = args.split(' ').filter(|p| !p.is_empty());
    let size = parts.next().ok_or(BAD_ARGS)?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD_ARGS);
    }
    let size = size.parse::<u64>().map_err(|_| BAD_ARGS)?;
    let last = match parts.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(BAD_ARGS),
    };
    if parts.next().is_some() {
        return Err(BAD_ARGS);
    }
    Ok(Command::Bdat { size, last })
}

/// Splits an ESMTP parameter into its upper-case-insensitive keyword and optional value.
pub(crate) fn split_param(param: &str) -> (&str, Option<&str>) {
    match param.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (param, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_commands() {
        assert_eq!(
            Command::parse("EHLO client.test"),
            Ok(Command::Ehlo("client.test"))
        );
        assert_eq!(Command::parse("helo x"), Ok(Command::Helo("x")));
        assert_eq!(Command::parse("DATA"), Ok(Command::Data));
        assert_eq!(Command::parse("data  "), Ok(Command::Data));
        assert_eq!(Command::parse("QUIT"), Ok(Command::Quit));
        assert_eq!(Command::parse("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(Command::parse("."), Ok(Command::Unknown));
        assert_eq!(Command::parse(""), Ok(Command::Unknown));
        assert_eq!(Command::parse("XYZZY"), Ok(Command::Unknown));
    }

    #[test]
    fn parses_mail_and_rcpt() {
        assert_eq!(
            Command::parse("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME"),
            Ok(Command::Mail(Path {
                address: "a@b",
                params: vec!["SIZE=10", "BODY=8BITMIME"],
            }))
        );
        assert_eq!(
            Command::parse("mail from: <>"),
            Ok(Command::Mail(Path {
                address: "",
                params: vec![],
            }))
        );
        assert_eq!(
            Command::parse("RCPT TO:<@relay.test:bob@x>"),
            Ok(Command::Rcpt(Path {
                address: "bob@x",
                params: vec![],
            }))
        );
        assert!(Command::parse("RCPT TO:<>").is_err());
        assert!(Command::parse("MAIL FROM:a@b").is_err());
        assert!(Command::parse("MAIL FROM:<a@b").is_err());
        assert!(Command::parse("MAIL FROM:<a@b>x").is_err());
        assert!(Command::parse("MAIL TO:<a@b>").is_err());
        assert!(Command::parse("MAIL").is_err());
        assert!(Command::parse("MAIL FR").is_err());
        assert!(Command::parse("RCPT TO:<a b@c>").is_err());
        assert!(Command::parse("RCPT TO:<@nocolon>").is_err());
        // Multi-byte characters right where the keyword would end must not panic.
        assert!(Command::parse("MAIL FROé:<a@b>").is_err());
        assert!(Command::parse("RCPT T\u{e9}<a@b>").is_err());
    }

    #[test]
    fn parses_bdat() {
        assert_eq!(
            Command::parse("BDAT 10 LAST"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            Command::parse("bdat 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert!(Command::parse("BDAT").is_err());
        assert!(Command::parse("BDAT -1").is_err());
        assert!(Command::parse("BDAT +1").is_err());
        assert!(Command::parse("BDAT 1 FIRST").is_err());
        assert!(Command::parse("BDAT 99999999999999999999999 LAST").is_err());
    }

    #[test]
    fn arbitrary_lines_never_panic() {
        let pieces = [
            "MAIL",
            "RCPT",
            "FROM:",
            "TO:",
            "<",
            ">",
            "@",
            " ",
            "=",
            "é",
            "\u{1F600}",
            "BDAT",
            "LAST",
            "AUTH",
            "EHLO",
            "9",
            "x",
            ":",
            "\t",
            "\0",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut line = String::new();
            for _ in 0..(x % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = Command::parse(&line);
        }
    }

    #[test]
    fn parses_auth() {
        assert_eq!(
            Command::parse("AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN",
                initial: Some("AGEAYg==")
            })
        );
        assert_eq!(
            Command::parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN",
                initial: None
            })
        );
        assert!(Command::parse("AUTH").is_err());
        assert!(Command::parse("AUTH A B C").is_err());
    }
}
