//! Query strings: decoded strictly from the client (a stray `%` or non-UTF-8 is an error, never
//! guessed at), and encoded for the upstream so it decodes exactly what fhir-fence scoped.
use super::error::RouteError;

/// Decoded query parameters, in order. Built only by [`parse_query`], which is strict.
pub type Params = Vec<(String, String)>;

/// Parses a raw query string strictly: `&`-separated `name=value` pairs, `+` as space,
/// `%XX` escapes only (a stray `%` is an error), UTF-8 only.
pub fn parse_query(raw: Option<&str>) -> Result<Params, RouteError> {
    let Some(raw) = raw else { return Ok(vec![]) };
    let mut out = Vec::new();
    for pair in raw.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode_component(k)?;
        if k.is_empty() {
            return Err(RouteError::BadQuery("empty parameter name".into()));
        }
        out.push((k, decode_component(v)?));
    }
    Ok(out)
}

fn decode_component(s: &str) -> Result<String, RouteError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex =
                    bytes.get(i + 1..i + 3).ok_or_else(|| RouteError::BadQuery(format!("bad %-escape in {s:?}")))?;
                let hex = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| RouteError::BadQuery(format!("bad %-escape in {s:?}")))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RouteError::BadQuery("parameters must be UTF-8".into()))
}

/// Encodes a query component for the upstream: RFC 3986 unreserved characters, `,` and `:` stay;
/// everything else (`|` too: Tomcat refuses it raw) is %-escaped.
pub fn encode_component(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b',')
        .remove(b':');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Builds `a=b&c=d` from decoded parameters.
pub fn encode_query(params: &[(String, String)]) -> String {
    params.iter().map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_query_decoding() {
        assert_eq!(
            parse_query(Some("a=b+c&d=%7C")).unwrap(),
            vec![("a".into(), "b c".into()), ("d".into(), "|".into())]
        );
        assert!(parse_query(Some("a=%zz")).is_err());
        assert!(parse_query(Some("a=%4")).is_err());
        assert!(parse_query(Some("a=%ff")).is_err());
        assert_eq!(encode_query(&[("_tag".into(), "urn:x|a b".into())]), "_tag=urn:x%7Ca%20b");
    }
}
