//! Roster files for bulk provisioning, and enrollment codes for printing.
//!
//! A roster is a CSV file with a header row naming its columns:
//! `name`, `station` (the polling station), `role` (`member`, `publisher`,
//! `admin` or `owner`: the role in the station's group), `cohort` (the tag
//! the accounts get, used for the bulk delete after the election) and,
//! optionally, `account_id`. Without an `account_id` the relay derives a
//! stable id from cohort, station and name, so a re-run finds the same
//! accounts.
//!
//! [`parse_csv`] reads a roster into rows (with their line numbers) and the
//! rows it could not read; [`import_in_batches`] sends the rows in batches
//! and adds up the answers; [`generate`] writes a deterministic roster for
//! tests and benchmarks.

use std::fmt::Write as _;
use std::future::Future;

use herold_proto::v1;

/// Rows of a roster and the lines that could not be read.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Rows, with their line numbers.
    pub rows: Vec<v1::RosterRow>,
    /// `(line, reason)` of the unreadable lines.
    pub errors: Vec<v1::RowError>,
}

/// Errors of [`parse_csv`] that stop the whole file.
#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    /// The header row is missing a required column.
    #[error("the header row has no {0:?} column (need name, station, role, cohort)")]
    MissingColumn(&'static str),
    /// The file is not CSV.
    #[error("cannot read the roster: {0}")]
    Csv(String),
}

/// Reads a roster CSV. A malformed line is reported in [`Parsed::errors`]
/// and does not stop the others.
pub fn parse_csv(data: &[u8]) -> Result<Parsed, RosterError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| RosterError::Csv(e.to_string()))?
        .clone();
    let col = |name: &'static str| {
        headers.iter().position(|h| {
            h.trim()
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(name)
        })
    };
    let name = col("name").ok_or(RosterError::MissingColumn("name"))?;
    let station = col("station").ok_or(RosterError::MissingColumn("station"))?;
    let role = col("role").ok_or(RosterError::MissingColumn("role"))?;
    let cohort = col("cohort").ok_or(RosterError::MissingColumn("cohort"))?;
    let account = col("account_id");
    // The line of a record, from its byte offset (the reader's own line
    // count skips blank lines).
    let line_at = |byte: u64| {
        let mut end = usize::try_from(byte).unwrap_or(data.len()).min(data.len());
        // A record's position can include the blank lines before it.
        while matches!(data.get(end), Some(b'\n' | b'\r')) {
            end += 1;
        }
        // A line ends as the reader ends a record: "\r\n", "\n" or a lone
        // "\r" (an old Mac export).
        let before = &data[..end];
        let breaks = before
            .iter()
            .enumerate()
            .filter(|(i, b)| **b == b'\n' || (**b == b'\r' && before.get(i + 1) != Some(&b'\n')))
            .count();
        u32::try_from(breaks + 1).unwrap_or(u32::MAX)
    };
    let mut out = Parsed::default();
    for record in reader.records() {
        match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| line_at(p.byte()));
                if r.iter().all(str::is_empty) {
                    continue;
                }
                if r.len() != headers.len() {
                    out.errors.push(v1::RowError {
                        line,
                        reason: format!("{} fields, the header has {}", r.len(), headers.len()),
                    });
                    continue;
                }
                let get = |i: usize| r.get(i).unwrap_or("").to_owned();
                out.rows.push(v1::RosterRow {
                    line,
                    name: get(name),
                    station: get(station),
                    role: get(role),
                    cohort: get(cohort),
                    account_id: account.map(get).unwrap_or_default(),
                });
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| line_at(p.byte()));
                out.errors.push(v1::RowError {
                    line,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Sends `rows` in batches of `batch` through `send` (one ImportRoster call
/// each), calling `progress` with the rows done so far, and adds up the
/// answers. Stops at the first failed call.
pub async fn import_in_batches<F, Fut>(
    rows: Vec<v1::RosterRow>,
    batch: usize,
    mut send: F,
    mut progress: impl FnMut(u64),
) -> Result<v1::ImportRosterResponse, tonic::Status>
where
    F: FnMut(Vec<v1::RosterRow>) -> Fut,
    Fut: Future<Output = Result<v1::ImportRosterResponse, tonic::Status>>,
{
    let mut total = v1::ImportRosterResponse::default();
    let mut done = 0u64;
    for chunk in rows.chunks(batch.max(1)) {
        let r = send(chunk.to_vec()).await?;
        total.created += r.created;
        total.unchanged += r.unchanged;
        total.failed += r.failed;
        total.conversations_created += r.conversations_created;
        total.errors.extend(r.errors);
        total.codes.extend(r.codes);
        done += chunk.len() as u64;
        progress(done);
    }
    total.errors.sort_by_key(|e| e.line);
    Ok(total)
}

/// A deterministic roster: `volunteers` people spread over `stations`
/// polling stations, the first of each station its `admin` (the station
/// lead), all tagged `cohort`. Same arguments, same file.
pub fn generate(volunteers: usize, stations: usize, cohort: &str, seed: u64) -> String {
    const FIRST: &[&str] = &[
        "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannes", "Ida", "Jonas",
        "Katrin", "Lukas", "Mia", "Noah", "Olga", "Paul", "Quirin", "Rosa", "Stefan", "Tara",
        "Uwe", "Vera", "Wolfgang", "Xenia", "Yusuf", "Zoe",
    ];
    const LAST: &[&str] = &[
        "Huber",
        "Bauer",
        "Wagner",
        "Müller",
        "Schmid",
        "Maier",
        "Hofmann",
        "Fischer",
        "Weber",
        "Koch",
        "Schneider",
        "Gruber",
        "Brunner",
        "Yilmaz",
        "Kowalski",
        "Rossi",
        "Nguyen",
        "Berger",
        "Lang",
        "Winkler",
    ];
    const STREETS: &[&str] = &[
        "Grundschule an der Türkenstraße",
        "Mittelschule Am Hart",
        "Gymnasium Pasing",
        "Rathaus Schwabing",
        "Pfarrsaal St. Anna",
        "Turnhalle Giesing",
        "Stadtbibliothek Sendling",
        "Kindergarten Laim",
    ];
    let stations = stations.max(1);
    let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic, no dependency.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = String::from("account_id,name,station,role,cohort\n");
    for i in 0..volunteers {
        let s = i % stations;
        let station = format!("Wahllokal {:03} {}", s + 1, STREETS[s % STREETS.len()]);
        let first = FIRST[(next() % FIRST.len() as u64) as usize];
        let last = LAST[(next() % LAST.len() as u64) as usize];
        let role = if i < stations { "admin" } else { "member" };
        let _ = writeln!(
            out,
            "{cohort}-{:05},{first} {last},{station},{role},{cohort}",
            i + 1
        );
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What a code's QR code holds: `herold:enroll?code=<code>`.
pub fn qr_payload(code: &str) -> String {
    format!("herold:enroll?code={code}")
}

/// The codes as CSV: account_id, name, station, code, expires (UTC).
pub fn codes_csv(codes: &[v1::EnrollmentCode]) -> String {
    let mut out = String::from("account_id,name,station,code,expires_at_utc\n");
    for c in codes {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            csv_field(&c.account_id),
            csv_field(&c.display_name),
            csv_field(&c.station),
            c.code,
            utc(c.expires_at_ms)
        );
    }
    out
}

/// A printable HTML page: one card per code with its QR code, sorted by
/// station, so each station's cards print together.
pub fn codes_html(codes: &[v1::EnrollmentCode]) -> String {
    let mut sorted: Vec<&v1::EnrollmentCode> = codes.iter().collect();
    sorted.sort_by(|a, b| (&a.station, &a.display_name).cmp(&(&b.station, &b.display_name)));
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Herold enrollment codes</title>\n\
         <style>body{font-family:sans-serif}.card{display:inline-block;width:30%;margin:1%;\
         padding:8px;border:1px dashed #888;page-break-inside:avoid;vertical-align:top}\
         .code{font:bold 1.3em monospace}svg{width:120px;height:120px}</style></head><body>\n",
    );
    for c in sorted {
        let svg = qrcode::QrCode::new(qr_payload(&c.code))
            .map(|q| {
                q.render::<qrcode::render::svg::Color<'_>>()
                    .quiet_zone(true)
                    .build()
            })
            .unwrap_or_default();
        // Drop the XML declaration: the SVG is inline.
        let svg = svg.find("<svg").map_or("", |i| &svg[i..]);
        let _ = writeln!(
            out,
            "<div class=\"card\">{svg}<div>{}</div><div>{}</div><div class=\"code\">{}</div>\
             <div>valid until {}</div></div>",
            html_escape(&c.display_name),
            html_escape(&c.station),
            html_escape(&c.code),
            utc(c.expires_at_ms)
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// The code's QR code for a terminal (two modules per character cell).
pub fn qr_terminal(code: &str) -> String {
    qr_text(&qr_payload(code))
}

/// The QR code of `payload` for a terminal (two modules per character
/// cell); empty when it does not fit a QR code.
pub fn qr_text(payload: &str) -> String {
    qrcode::QrCode::new(payload)
        .map(|q| {
            q.render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build()
        })
        .unwrap_or_default()
}

/// The code's QR code as a PNG (8 pixels per module, with a quiet zone).
pub fn qr_png(code: &str) -> Result<Vec<u8>, String> {
    let q = qrcode::QrCode::new(qr_payload(code)).map_err(|e| e.to_string())?;
    let (w, colors) = (q.width(), q.to_colors());
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let side = (w + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (x, y) = (i % w + QUIET, i / w + QUIET);
            for dy in 0..SCALE {
                let row = (y * SCALE + dy) * side;
                for dx in 0..SCALE {
                    if let Some(p) = pixels.get_mut(row + x * SCALE + dx) {
                        *p = 0;
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let side = u32::try_from(side).map_err(|e| e.to_string())?;
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&pixels).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// `YYYY-MM-DD HH:MM` UTC of a unix time in ms.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_roster_parses_back() {
        let text = generate(50, 7, "election-2026", 1);
        assert_eq!(text, generate(50, 7, "election-2026", 1));
        let p = parse_csv(text.as_bytes()).unwrap();
        assert_eq!(p.rows.len(), 50);
        assert!(p.errors.is_empty());
        assert_eq!(p.rows[0].line, 2);
        assert_eq!(p.rows[0].role, "admin");
        assert_eq!(p.rows[7].role, "member");
        let stations: std::collections::BTreeSet<_> =
            p.rows.iter().map(|r| r.station.clone()).collect();
        assert_eq!(stations.len(), 7);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let text = "name,station,role,cohort\nAnna,WL 1,member,c\nBen,WL 1\n\nClara,WL 2,admin,c\n";
        let p = parse_csv(text.as_bytes()).unwrap();
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[1].line, 5);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 3);
        assert!(matches!(
            parse_csv(b"name,role,cohort\n"),
            Err(RosterError::MissingColumn("station"))
        ));
    }

    /// Found by the `roster_csv` fuzz target: a lone "\r" ends a record
    /// for the CSV reader, so it ends a line in the report too; a row and
    /// an error never share a line number.
    #[test]
    fn lines_end_as_the_reader_ends_records() {
        let p = parse_csv(b"name,station,role,cohort\nAn\rna,WL 1,'ember,c\nBen,c\n").unwrap();
        assert_eq!(p.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [3]);
        assert_eq!(p.errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4]);
        let p = parse_csv(b"name,station,role,cohort\r\nA,s,member,c\r\nB\r\n").unwrap();
        assert_eq!(p.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2]);
        assert_eq!(p.errors.iter().map(|e| e.line).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn codes_render() {
        let c = v1::EnrollmentCode {
            account_id: "a".into(),
            display_name: "Anna \"A\", Huber".into(),
            code: "ABCD-EFGH-JKMN".into(),
            expires_at_ms: 1_700_000_000_000,
            station: "WL <1>".into(),
        };
        let csv = codes_csv(std::slice::from_ref(&c));
        assert!(csv.contains("\"Anna \"\"A\"\", Huber\""), "{csv}");
        assert!(csv.contains("2023-11-14 22:13"), "{csv}");
        let html = codes_html(std::slice::from_ref(&c));
        assert!(html.contains("WL &lt;1&gt;") && html.contains("<svg"));
        assert!(qr_png(&c.code).unwrap().starts_with(b"\x89PNG"));
        assert!(!qr_terminal(&c.code).is_empty());
    }
}
