//! AWS Signature Version 4 in header form, as Cockpit's `lib/s3.py` computes it
//! (cockpit-protocol.md 7.3).

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// Characters S3 leaves unencoded in a canonical URI or query.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The hash S3 expects for an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The payload hash of a body that is not hashed (sent over TLS).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Cockpit's region rule: the third label from the end of an `*.amazonaws.com` host, else `any`.
pub fn region(host: &str) -> String {
    let labels: Vec<&str> = host.split('.').collect();
    if host.ends_with(".amazonaws.com") && labels.len() >= 3 {
        labels[labels.len() - 3].to_owned()
    } else {
        "any".to_owned()
    }
}

/// Percent-encodes each segment of a path, keeping the slashes.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(|segment| utf8_percent_encode(segment, UNRESERVED).to_string()).collect::<Vec<_>>().join("/")
}

/// A canonical query string: pairs encoded and sorted.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            format!("{}={}", utf8_percent_encode(key, UNRESERVED), utf8_percent_encode(value, UNRESERVED))
        })
        .collect();
    encoded.sort();
    encoded.join("&")
}

/// What a request needs signed.
pub struct Request<'a> {
    pub method: &'a str,
    /// Already encoded, as sent.
    pub path: &'a str,
    /// Already canonical, as sent.
    pub query: &'a str,
    /// The `Host` header value, as sent.
    pub host: &'a str,
    /// Extra headers to sign and send (lower-case names), e.g. content-type, x-amz-acl.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// The headers to add to the request: `x-amz-date`, `x-amz-content-sha256`, `authorization`.
pub fn sign(
    request: &Request,
    access: &str,
    secret: &str,
    region: &str,
    now: time::OffsetDateTime,
) -> Vec<(String, String)> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let amz_date = now.to_offset(time::UtcOffset::UTC).format(&format).expect("a formattable date");
    let date = &amz_date[..8];
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
        .chain([
            ("host".to_owned(), request.host.to_owned()),
            ("x-amz-content-sha256".to_owned(), request.payload_sha256.to_owned()),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ])
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        request.method, request.path, request.query, request.payload_sha256
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date);
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &to_sign));
    vec![
        ("x-amz-date".to_owned(), amz_date),
        ("x-amz-content-sha256".to_owned(), request.payload_sha256.to_owned()),
        (
            "authorization".to_owned(),
            format!("AWS4-HMAC-SHA256 Credential={access}/{scope},SignedHeaders={signed},Signature={signature}"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_follows_cockpits_rule() {
        assert_eq!(region("cockpit-ci-logs.s3.us-east-1.amazonaws.com"), "us-east-1");
        assert_eq!(region("localhost"), "any");
        assert_eq!(region("s3.example.com"), "any");
    }

    /// AWS's documented example "GET Object" of the header-based Signature V4.
    #[test]
    fn matches_awss_get_object_example() {
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            host: "examplebucket.s3.amazonaws.com",
            headers: &[("range", "bytes=0-9")],
            payload_sha256: EMPTY_SHA256,
        };
        let now = time::macros::datetime!(2013-05-24 00:00:00 UTC);
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let headers = sign(&request, "AKIAIOSFODNN7EXAMPLE", secret, "us-east-1", now);
        let authorization = &headers.iter().find(|(name, _)| name == "authorization").unwrap().1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn encodes_like_s3() {
        assert_eq!(encode_path("/logs/pull-1-abc/data/sub dir/f+1.txt"), "/logs/pull-1-abc/data/sub%20dir/f%2B1.txt");
        assert_eq!(encode_query(&[("prefix", "a b/"), ("list-type", "2")]), "list-type=2&prefix=a%20b%2F");
    }
}
