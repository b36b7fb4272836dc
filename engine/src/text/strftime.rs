//! A small `strftime` for chat templates' `strftime_now(format)` (UTC, C locale), without a date crate.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Monday
    pub weekday: u32,
    /// 1..=366
    pub yday: u32,
}

/// UTC civil time of `secs` seconds after the Unix epoch (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[month as usize - 1] + day + u32::from(leap && month > 2);
    // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as u32;
    Civil { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60, weekday, yday }
}

/// Format `t` with C `strftime` directives: `%Y %y %m %d %e %H %I %M %S %p %b %h %B %a %A %j %%`, and
/// glibc's `%-d` style (no padding) for the numeric ones. Unknown directives are an error.
pub(crate) fn format_civil(t: &Civil, format: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next().ok_or("strftime: format ends with `%`")?;
        let pad = spec != '-';
        if !pad {
            spec = chars.next().ok_or("strftime: format ends with `%-`")?;
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if pad { write!(out, "{v:0width$}") } else { write!(out, "{v}") }.expect("write to String")
        };
        let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
        match spec {
            'Y' => num(&mut out, t.year, 4),
            'y' => num(&mut out, t.year.rem_euclid(100), 2),
            'm' => num(&mut out, t.month as i64, 2),
            'd' => num(&mut out, t.day as i64, 2),
            'e' => write!(out, "{:>2}", t.day).expect("write to String"),
            'H' => num(&mut out, t.hour as i64, 2),
            'I' => num(&mut out, hour12 as i64, 2),
            'M' => num(&mut out, t.minute as i64, 2),
            'S' => num(&mut out, t.second as i64, 2),
            'j' => num(&mut out, t.yday as i64, 3),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'b' | 'h' => out.push_str(&MONTHS[t.month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[t.month as usize - 1]),
            'a' => out.push_str(&DAYS[t.weekday as usize][..3]),
            'A' => out.push_str(DAYS[t.weekday as usize]),
            '%' => out.push('%'),
            other => return Err(format!("strftime: unsupported directive `%{other}` in {format:?}")),
        }
    }
    Ok(out)
}

/// `strftime_now(format)` for templates: the current UTC time formatted with [`format_civil`].
pub(crate) fn strftime_utc_now(format: &str) -> Result<String, minijinja::Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    format_civil(&civil_from_unix(secs), format)
        .map_err(|m| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // date -u -d @0 / @951782400 (2000-02-29) / @1735689599 (2024-12-31 23:59:59, a Tuesday)
        let t = civil_from_unix(0);
        assert_eq!(format_civil(&t, "%Y-%m-%d %H:%M:%S %a %j").unwrap(), "1970-01-01 00:00:00 Thu 001");
        let t = civil_from_unix(951_782_400);
        assert_eq!(format_civil(&t, "%d %b %Y %A %j").unwrap(), "29 Feb 2000 Tuesday 060");
        let t = civil_from_unix(1_735_689_599);
        assert_eq!(format_civil(&t, "%-d %B %y %I:%M %p %j").unwrap(), "31 December 24 11:59 PM 366");
        assert!(format_civil(&t, "%Q").is_err());
    }
}
