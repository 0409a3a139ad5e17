//! Result formats of a disclosure: JSON, CSV and an ETSI TS 102 657-style
//! RetainedData XML, rendered in full into memory so that the SHA-256 of the
//! exact bytes is known, and audited, before the first byte is sent.
//!
//! The bytes rendered here hold raw identifiers: they are the disclosure.
//! They are sealed at rest ([`super::results`] keeps a result sealed until
//! fetched) and never logged.

use std::collections::BTreeSet;
use std::io;

use chrono::{DateTime, SecondsFormat, Utc};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use ring::digest::{SHA256, digest};
use serde_json::{Map, Value, json};

use super::lookup::FoundRecord;
use crate::model::{Category, IdentifierField, TimestampMicros};

/// The formats a result can be delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    Json,
    Csv,
    EtsiXml,
}

impl ResultFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultFormat::Json => "json",
            ResultFormat::Csv => "csv",
            ResultFormat::EtsiXml => "etsi_xml",
        }
    }

    pub fn parse(text: &str) -> Option<ResultFormat> {
        [ResultFormat::Json, ResultFormat::Csv, ResultFormat::EtsiXml].into_iter().find(|f| f.as_str() == text)
    }
}

/// What heads a result.
#[derive(Debug, Clone)]
pub struct ResultHeader {
    /// The request's id: country code, authority id, request number.
    pub country: String,
    pub authority: String,
    pub request_number: u64,
    /// The communications service provider's id.
    pub csp_id: String,
    pub generated_at: DateTime<Utc>,
    pub warrant: String,
    /// answered, answered_partially or unavailable.
    pub status: String,
    pub window_start: TimestampMicros,
    pub window_end: TimestampMicros,
    pub categories: BTreeSet<Category>,
}

impl ResultHeader {
    pub fn request_id(&self) -> String {
        request_id(&self.country, &self.authority, self.request_number)
    }
}

/// The RequestID of ETSI TS 102 657: country code, authorised
/// organisation, request number.
pub fn request_id(country: &str, authority: &str, number: u64) -> String {
    format!("{country}-{authority}-{number}")
}

/// Rendered bytes and their SHA-256 (hex).
#[derive(Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rendered({} bytes, sha256 {})", self.bytes.len(), self.sha256)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes).as_ref())
}

fn time(t: TimestampMicros) -> String {
    t.to_datetime().map(|d| d.to_rfc3339_opts(SecondsFormat::Micros, true)).unwrap_or_default()
}

/// The identifier fields a result shows: those of the allowed categories.
fn fields(categories: &BTreeSet<Category>) -> Vec<IdentifierField> {
    IdentifierField::ALL.into_iter().filter(|f| categories.contains(&f.category())).collect()
}

fn value_of(record: &FoundRecord, field: IdentifierField) -> Option<&str> {
    record.identifiers.iter().find(|(f, _)| *f == field).map(|(_, v)| v.as_str())
}

/// Renders a result.
pub fn render(format: ResultFormat, header: &ResultHeader, records: &[FoundRecord]) -> Rendered {
    let bytes = match format {
        ResultFormat::Json => json_bytes(header, records),
        ResultFormat::Csv => csv_bytes(header, records),
        ResultFormat::EtsiXml => xml_bytes(header, records),
    };
    Rendered { sha256: sha256_hex(&bytes), bytes }
}

fn record_json(record: &FoundRecord, categories: &BTreeSet<Category>) -> Value {
    let mut map = Map::new();
    map.insert("record_id".into(), record.record_id.clone().into());
    map.insert("service".into(), record.service.clone().into());
    map.insert("direction".into(), record.direction.clone().into());
    map.insert("start_time".into(), time(record.start_time).into());
    map.insert("end_time".into(), record.end_time.map(time).into());
    for field in fields(categories) {
        map.insert(field.name().into(), value_of(record, field).into());
    }
    if categories.contains(&Category::Ip) {
        map.insert("src_port".into(), record.src_port.into());
        map.insert("dst_port".into(), record.dst_port.into());
    }
    if let Some(order) = &record.preserved_under {
        map.insert("preserved_under".into(), order.clone().into());
    }
    Value::Object(map)
}

fn json_bytes(header: &ResultHeader, records: &[FoundRecord]) -> Vec<u8> {
    let document = json!({
        "header": {
            "request_id": header.request_id(),
            "csp_id": header.csp_id,
            "generated_at": header.generated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "warrant": header.warrant,
            "status": header.status,
            "window_start": time(header.window_start),
            "window_end": time(header.window_end),
            "categories": header.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "records": records.len(),
        },
        "records": records.iter().map(|r| record_json(r, &header.categories)).collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A data subject's export (GDPR art. 15/20): every retained record of one
/// subscriber, all categories, JSON.
pub fn subject_export(reference: &str, csp_id: &str, generated_at: DateTime<Utc>, records: &[FoundRecord]) -> Rendered {
    let all: BTreeSet<Category> = Category::ALL.into();
    let document = json!({
        "header": {
            "reference": reference,
            "controller": csp_id,
            "generated_at": generated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "records": records.len(),
        },
        "records": records.iter().map(|r| record_json(r, &all)).collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
    bytes.push(b'\n');
    Rendered { sha256: sha256_hex(&bytes), bytes }
}

fn csv_bytes(header: &ResultHeader, records: &[FoundRecord]) -> Vec<u8> {
    let fields = fields(&header.categories);
    let ip = header.categories.contains(&Category::Ip);
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut titles = vec!["request_id", "record_id", "service", "direction", "start_time", "end_time"];
    titles.extend(fields.iter().map(|f| f.name()));
    if ip {
        titles.extend(["src_port", "dst_port"]);
    }
    // Writing into a Vec cannot fail.
    let _ = writer.write_record(&titles);
    let request_id = header.request_id();
    for record in records {
        let mut row = vec![
            request_id.clone(),
            record.record_id.clone(),
            record.service.clone(),
            record.direction.clone().unwrap_or_default(),
            time(record.start_time),
            record.end_time.map(time).unwrap_or_default(),
        ];
        row.extend(fields.iter().map(|f| value_of(record, *f).unwrap_or_default().to_string()));
        if ip {
            row.push(record.src_port.map(|p| p.to_string()).unwrap_or_default());
            row.push(record.dst_port.map(|p| p.to_string()).unwrap_or_default());
        }
        let _ = writer.write_record(&row);
    }
    writer.into_inner().unwrap_or_default()
}

fn xml_bytes(header: &ResultHeader, records: &[FoundRecord]) -> Vec<u8> {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let _ = write_xml(&mut writer, header, records);
    let mut bytes = writer.into_inner();
    bytes.push(b'\n');
    bytes
}

fn text<W: io::Write>(writer: &mut Writer<W>, name: &str, value: &str) -> io::Result<()> {
    writer.create_element(name).write_text_content(BytesText::new(value))?;
    Ok(())
}

/// ETSI TS 102 657 response status for our request status.
fn etsi_status(status: &str) -> &'static str {
    match status {
        "answered" => "responseComplete",
        "answered_partially" => "responsePartial",
        _ => "responseUnavailable",
    }
}

fn write_xml<W: io::Write>(writer: &mut Writer<W>, header: &ResultHeader, records: &[FoundRecord]) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer.create_element("RetainedDataMessage").write_inner_content(|w| {
        w.create_element("RetainedDataHeader").write_inner_content(|w| {
            w.create_element("RequestID").write_inner_content(|w| {
                text(w, "CountryCode", &header.country)?;
                text(w, "AuthorizedOrganizationID", &header.authority)?;
                text(w, "RequestNumber", &header.request_number.to_string())
            })?;
            text(w, "CSPID", &header.csp_id)?;
            text(w, "TimeStamp", &header.generated_at.to_rfc3339_opts(SecondsFormat::Micros, true))?;
            text(w, "RetainedDataHeaderType", "response")?;
            text(w, "ResponseStatus", etsi_status(&header.status))?;
            text(w, "WarrantReference", &header.warrant)?;
            text(w, "NumberOfRecords", &records.len().to_string())
        })?;
        w.create_element("RetainedDataPayload").write_inner_content(|w| {
            for (n, record) in records.iter().enumerate() {
                write_record_xml(w, n + 1, record, &header.categories)?;
            }
            Ok::<(), io::Error>(())
        })?;
        Ok::<(), io::Error>(())
    })?;
    Ok(())
}

fn write_record_xml<W: io::Write>(
    writer: &mut Writer<W>,
    number: usize,
    record: &FoundRecord,
    categories: &BTreeSet<Category>,
) -> io::Result<()> {
    let element = if record.service == "data" { "NetworkAccessRecord" } else { "TelephonyRecord" };
    writer
        .create_element("RetainedData")
        .with_attribute(("recordNumber", number.to_string().as_str()))
        .write_inner_content(|w| {
            w.create_element(element).write_inner_content(|w| {
                text(w, "CommunicationID", &record.record_id)?;
                text(w, "Service", &record.service)?;
                if let Some(direction) = &record.direction {
                    text(w, "Direction", direction)?;
                }
                text(w, "BeginTime", &time(record.start_time))?;
                if let Some(order) = &record.preserved_under {
                    text(w, "PreservationOrder", order)?;
                }
                if let Some(end) = record.end_time {
                    text(w, "EndTime", &time(end))?;
                }
                let parties = [
                    ("originating", IdentifierField::CallingNumber),
                    ("terminating", IdentifierField::CalledNumber),
                    ("forwarding", IdentifierField::RedirectingNumber),
                ];
                for (role, field) in parties {
                    if categories.contains(&field.category())
                        && let Some(number) = value_of(record, field)
                    {
                        w.create_element("PartyInformation").write_inner_content(|w| {
                            text(w, "PartyRole", role)?;
                            text(w, "MSISDN", number)
                        })?;
                    }
                }
                let served = [
                    ("SIPURI", IdentifierField::SipUri),
                    ("IMSI", IdentifierField::Imsi),
                    ("IMEI", IdentifierField::Imei),
                ];
                let present: Vec<(&str, &str)> = served
                    .iter()
                    .filter(|(_, f)| categories.contains(&f.category()))
                    .filter_map(|(name, f)| value_of(record, *f).map(|v| (*name, v)))
                    .collect();
                if !present.is_empty() {
                    w.create_element("PartyInformation").write_inner_content(|w| {
                        text(w, "PartyRole", "served")?;
                        for (name, value) in &present {
                            text(w, name, value)?;
                        }
                        Ok::<(), io::Error>(())
                    })?;
                }
                for (role, field) in [("start", IdentifierField::CellIdStart), ("end", IdentifierField::CellIdEnd)] {
                    if categories.contains(&field.category())
                        && let Some(cell) = value_of(record, field)
                    {
                        w.create_element("Location")
                            .with_attribute(("at", role))
                            .write_inner_content(|w| text(w, "CellID", cell))?;
                    }
                }
                for (role, field, port) in [
                    ("source", IdentifierField::SrcIp, record.src_port),
                    ("destination", IdentifierField::DstIp, record.dst_port),
                ] {
                    if categories.contains(&field.category())
                        && let Some(address) = value_of(record, field)
                    {
                        w.create_element("IPAddress").with_attribute(("role", role)).write_inner_content(|w| {
                            text(w, "Address", address)?;
                            if let Some(port) = port {
                                text(w, "Port", &port.to_string())?;
                            }
                            Ok::<(), io::Error>(())
                        })?;
                    }
                }
                Ok::<(), io::Error>(())
            })?;
            Ok::<(), io::Error>(())
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn records() -> Vec<FoundRecord> {
        let start = TimestampMicros::from_datetime(Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap());
        vec![FoundRecord {
            day: start.partition_date(),
            record_id: "r-1".into(),
            service: "voice".into(),
            direction: Some("mo".into()),
            start_time: start,
            end_time: Some(TimestampMicros(start.0 + 60_000_000)),
            identifiers: vec![
                (IdentifierField::CallingNumber, "+4520000001".into()),
                (IdentifierField::CalledNumber, "+4520000002".into()),
                (IdentifierField::CellIdStart, "238-01-1-2".into()),
                (IdentifierField::Imei, "490154203237518".into()),
            ],
            src_port: None,
            dst_port: None,
            preserved_under: None,
        }]
    }

    fn header(categories: &[Category]) -> ResultHeader {
        ResultHeader {
            country: "DK".into(),
            authority: "dk-police".into(),
            request_number: 17,
            csp_id: "op<&>".into(),
            generated_at: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
            warrant: "w-1".into(),
            status: "answered".into(),
            window_start: TimestampMicros(0),
            window_end: TimestampMicros(i64::MAX / 2),
            categories: categories.iter().copied().collect(),
        }
    }

    #[test]
    fn every_format_shows_only_the_allowed_categories_and_digests_its_bytes() {
        let header = header(&[Category::Traffic]);
        for format in [ResultFormat::Json, ResultFormat::Csv, ResultFormat::EtsiXml] {
            let rendered = render(format, &header, &records());
            let text = String::from_utf8(rendered.bytes.clone()).unwrap();
            assert!(text.contains("+4520000001") && text.contains("+4520000002"), "{format:?}: {text}");
            assert!(!text.contains("238-01-1-2"), "{format:?} leaks location");
            assert!(!text.contains("490154203237518"), "{format:?} leaks the device");
            assert!(text.contains("DK-dk-police-17") || text.contains("<RequestNumber>17"), "{format:?}");
            assert_eq!(rendered.sha256, sha256_hex(&rendered.bytes));
            assert_eq!(rendered.sha256.len(), 64);
        }
    }

    #[test]
    fn json_is_parseable_and_counts_its_records() {
        let rendered = render(ResultFormat::Json, &header(&[Category::Traffic, Category::Location]), &records());
        let value: Value = serde_json::from_slice(&rendered.bytes).unwrap();
        assert_eq!(value["header"]["records"], 1);
        assert_eq!(value["records"][0]["cell_id_start"], "238-01-1-2");
        assert_eq!(value["records"][0]["calling_number"], "+4520000001");
        assert!(value["records"][0].get("imei").is_none());
    }

    #[test]
    fn csv_has_a_header_row_and_one_row_per_record() {
        let rendered = render(ResultFormat::Csv, &header(&[Category::Device]), &records());
        let mut reader = csv::Reader::from_reader(rendered.bytes.as_slice());
        let titles = reader.headers().unwrap().clone();
        assert!(titles.iter().any(|t| t == "imei") && !titles.iter().any(|t| t == "calling_number"));
        let rows: Vec<_> = reader.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][0], "DK-dk-police-17");
    }

    #[test]
    fn xml_escapes_text_and_carries_the_etsi_header() {
        let rendered = render(ResultFormat::EtsiXml, &header(&[Category::Traffic, Category::Device]), &records());
        let text = String::from_utf8(rendered.bytes).unwrap();
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(text.contains("<CSPID>op&lt;&amp;&gt;</CSPID>"), "{text}");
        assert!(text.contains("<ResponseStatus>responseComplete</ResponseStatus>"));
        assert!(text.contains("<PartyRole>originating</PartyRole>"));
        assert!(text.contains("<IMEI>490154203237518</IMEI>"));
        // Well-formed: quick-xml reads it back to the end.
        let mut reader = quick_xml::Reader::from_str(&text);
        let mut depth = 0i32;
        loop {
            match reader.read_event().unwrap() {
                Event::Start(_) => depth += 1,
                Event::End(_) => depth -= 1,
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0);
    }
}
