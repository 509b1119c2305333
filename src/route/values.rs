//! The values of the few fixed parameters fhir-fence passes on unchanged (instance, type and
//! system history's `_count`, `_since`, `_at`; `$everything`'s `_count`, `_since`, `_type`):
//! checked here, so a value the upstream cannot read is fhir-fence's precise 400 rather than
//! whatever the upstream makes of it (HAPI's `$everything` answers `_count=abc` with a 500, its
//! instance history ignores it). Search parameters are not here: `scope::params` owns them.
use super::RouteError;

/// Whether `value` is a value the fixed parameter `name` can take; `Err` names what it must be.
pub fn check(name: &str, value: &str, interaction: &'static str) -> Result<(), RouteError> {
    let expected = match name {
        "_count" if count(value) => return Ok(()),
        "_count" => "a whole number of at most 9 digits",
        "_since" if instant(value) => return Ok(()),
        "_since" => "an instant (YYYY-MM-DDThh:mm:ss with a time zone)",
        "_at" if date_time(value.strip_prefix(prefix(value)).unwrap_or(value)) => return Ok(()),
        "_at" => "a dateTime, optionally after a comparison prefix (ge, le…)",
        "_type"
            if !value.is_empty() && value.split(',').all(|t| crate::fhir::shape::Model::r4().is_resource_type(t)) =>
        {
            return Ok(())
        }
        "_type" => "a comma-separated list of R4 resource types",
        "_pretty" => return Ok(()),
        _ => return Err(RouteError::Param { param: name.to_owned(), interaction }),
    };
    Err(RouteError::Value { param: name.to_owned(), interaction, expected })
}

fn count(v: &str) -> bool {
    (1..=9).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
}

/// A comparison prefix of a date parameter, if `v` starts with one.
fn prefix(v: &str) -> &str {
    ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"].into_iter().find(|p| v.starts_with(p)).unwrap_or("")
}

/// FHIR `instant`: a full date and time to the second, with a time zone.
fn instant(v: &str) -> bool {
    match v.split_once('T') {
        Some((date, time)) => full_date(date) && time_with_zone(time),
        None => false,
    }
}

/// FHIR `dateTime`: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full date with a time and zone.
fn date_time(v: &str) -> bool {
    match v.split_once('T') {
        Some((date, time)) => full_date(date) && time_with_zone(time),
        None => match v.len() {
            4 => digits(v),
            7 => digits(&v[..4]) && &v[4..5] == "-" && month(&v[5..7]),
            _ => full_date(v),
        },
    }
}

fn full_date(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() == 10
        && digits(&v[..4])
        && b[4] == b'-'
        && month(&v[5..7])
        && b[7] == b'-'
        && digits(&v[8..10])
        && (1..=31).contains(&v[8..10].parse::<u8>().unwrap_or(0))
}

fn month(v: &str) -> bool {
    digits(v) && (1..=12).contains(&v.parse::<u8>().unwrap_or(0))
}

/// `hh:mm:ss[.fraction]` then `Z` or `±hh:mm`.
fn time_with_zone(v: &str) -> bool {
    let (time, zone) = match v.strip_suffix('Z') {
        Some(t) => (t, None),
        None if v.len() > 6 => {
            let (t, z) = v.split_at(v.len() - 6);
            (t, Some(z))
        }
        None => return false,
    };
    let zone_ok = zone.is_none_or(|z| {
        let b = z.as_bytes();
        (b[0] == b'+' || b[0] == b'-') && hh_mm(&z[1..], 14)
    });
    let (clock, fraction) = time.split_once('.').map_or((time, None), |(c, f)| (c, Some(f)));
    zone_ok
        && clock.len() == 8
        && hh_mm(&clock[..5], 23)
        && &clock[5..6] == ":"
        && digits(&clock[6..8])
        && clock[6..8].parse::<u8>().is_ok_and(|s| s <= 60)
        && fraction.is_none_or(|f| (1..=9).contains(&f.len()) && digits(f))
}

fn hh_mm(v: &str, max_hour: u8) -> bool {
    v.len() == 5
        && digits(&v[..2])
        && v[..2].parse::<u8>().is_ok_and(|h| h <= max_hour)
        && &v[2..3] == ":"
        && digits(&v[3..5])
        && v[3..5].parse::<u8>().is_ok_and(|m| m <= 59)
}

fn digits(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn fixed_parameters_take_only_values_the_upstream_reads() {
        for (name, ok) in [
            ("_count", "10"),
            ("_count", "0"),
            ("_since", "2020-01-01T00:00:00Z"),
            ("_since", "2020-01-01T00:00:00.123+02:00"),
            ("_at", "2020"),
            ("_at", "ge2020-05"),
            ("_at", "le2020-05-01T10:00:00-05:00"),
            ("_type", "Observation,Condition"),
        ] {
            assert!(check(name, ok, "history").is_ok(), "{name}={ok}");
        }
        for (name, bad) in [
            ("_count", "abc"),
            ("_count", "-1"),
            ("_count", "1e3"),
            ("_count", "9999999999"),
            ("_count", ""),
            ("_since", "2020"),
            ("_since", "2020-01-01T00:00:00"),
            ("_since", "2020-13-01T00:00:00Z"),
            ("_since", "2020-01-01T24:00:00Z"),
            ("_at", "yesterday"),
            ("_at", "2020-1"),
            ("_type", "Foo"),
            ("_type", "Observation,"),
            ("_type", ""),
        ] {
            let e = check(name, bad, "history").unwrap_err().to_string();
            assert!(e.contains(name), "{name}={bad}: {e}");
        }
        assert!(check("_id", "x", "history").is_err());
    }
}
