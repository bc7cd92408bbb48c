//! A certificate's validity period, read from its DER: the one field of X.509 the vault needs
//! beyond what rustls and webpki check, so that a certificate already expired or not yet valid
//! is refused when loaded rather than served. A few lines of DER walking rather than an X.509
//! parser dependency.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// When a certificate is valid (`notBefore`..=`notAfter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }
pub fn validity(der: &[u8]) -> Result<Validity, String> {
    let malformed = || "holds a certificate that is not well-formed X.509".to_owned();
    let (cert, _) = tlv(der, 0x30).ok_or_else(malformed)?;
    let (mut tbs, _) = tlv(cert, 0x30).ok_or_else(malformed)?;
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs, 0xa0).ok_or_else(malformed)?.1;
    }
    let (_, rest) = tlv(tbs, 0x02).ok_or_else(malformed)?;
    let (_, rest) = tlv(rest, 0x30).ok_or_else(malformed)?;
    let (_, rest) = tlv(rest, 0x30).ok_or_else(malformed)?;
    let (period, _) = tlv(rest, 0x30).ok_or_else(malformed)?;
    let (not_before, rest) = time_value(period).ok_or_else(malformed)?;
    let (not_after, _) = time_value(rest).ok_or_else(malformed)?;
    Ok(Validity { not_before, not_after })
}

/// The content of the element at the start of `input` if its tag is `tag`, and what follows.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (digits, after) = rest.split_at(n);
        rest = after;
        digits.iter().fold(0usize, |acc, d| (acc << 8) | usize::from(*d))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as RFC 5280 requires
/// them, and what follows it.
fn time_value(input: &[u8]) -> Option<(OffsetDateTime, &[u8])> {
    let (text, rest, year) = match input.first()? {
        0x17 => {
            let (text, rest) = tlv(input, 0x17)?;
            let yy = number(text.get(..2)?)?;
            // RFC 5280: 50-99 are 19xx, 00-49 are 20xx.
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            (text.get(2..)?, rest, year)
        }
        0x18 => {
            let (text, rest) = tlv(input, 0x18)?;
            (text.get(4..)?, rest, number(text.get(..4)?)?)
        }
        _ => return None,
    };
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let month = Month::try_from(u8::try_from(number(&text[0..2])?).ok()?).ok()?;
    let date = Date::from_calendar_date(i32::try_from(year).ok()?, month, number(&text[2..4])? as u8).ok()?;
    let time = Time::from_hms(
        number(&text[4..6])? as u8,
        number(&text[6..8])? as u8,
        number(&text[8..10])? as u8,
    )
    .ok()?;
    Some((PrimitiveDateTime::new(date, time).assume_utc(), rest))
}

fn number(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: Month, day: u8, (h, m, s): (u8, u8, u8)) -> OffsetDateTime {
        PrimitiveDateTime::new(
            Date::from_calendar_date(year, month, day).unwrap(),
            Time::from_hms(h, m, s).unwrap(),
        )
        .assume_utc()
    }

    #[test]
    fn reads_the_validity_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = at(2020, Month::February, 29, (1, 2, 3));
        // Past 2049: a GeneralizedTime rather than a UTCTime.
        params.not_after = at(2061, Month::December, 31, (23, 59, 58));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        assert_eq!(v.not_before, params.not_before);
        assert_eq!(v.not_after, params.not_after);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(validity(b"").is_err());
        assert!(validity(&[0x30, 0x82, 0xff]).is_err());
        assert!(validity(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
    }
}
