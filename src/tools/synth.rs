//! A synthetic CDR generator with a realistic mix, for the demo, `produce`,
//! tests and benchmarks.
//!
//! A fixed population of subscribers recurs across records (as real
//! subscribers do), a share of them are inbound roamers with foreign numbers
//! and IMSIs, home subscribers sometimes roam abroad, all six services
//! appear, and a small share of records carry a deliberate defect so that
//! the refusal path is exercised. Generation is deterministic for a seed, so
//! a test can keep the generated records as ground truth.
//!
//! Record ids are built from a node name and a sequence number only: they
//! never contain a number of the population, so a scan of written files for
//! raw identifiers is meaningful.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::model::Service;
use crate::proto;

/// How to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub seed: u64,
    /// Size of the subscriber population.
    pub subscribers: usize,
    /// Records start within this many days before `until`.
    pub days: u32,
    /// The latest start time.
    pub until: DateTime<Utc>,
    /// Share of records with a deliberate defect, 0.0 to 1.0.
    pub invalid_ratio: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { seed: 42, subscribers: 5_000, days: 7, until: Utc::now(), invalid_ratio: 0.01 }
    }
}

/// A subscriber of the population.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub msisdn: String,
    pub imsi: String,
    pub imei: String,
    pub sip_uri: String,
    /// Inbound roamer from a foreign network.
    pub roamer: bool,
}

/// The deliberate defect of an invalid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    MalformedJson,
    BadNumber,
    EndBeforeStart,
    UnknownService,
    MissingStartTime,
}

/// One generated record, with every field in clear: the ground truth.
#[derive(Debug, Clone, Default)]
pub struct SyntheticCdr {
    pub record_id: String,
    pub service: &'static str,
    pub direction: Option<&'static str>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub calling_number: Option<String>,
    pub called_number: Option<String>,
    pub redirecting_number: Option<String>,
    pub sip_uri: Option<String>,
    pub imsi: Option<String>,
    pub imei: Option<String>,
    pub cell_id_start: Option<String>,
    pub cell_id_end: Option<String>,
    pub src_ip: Option<String>,
    pub dst_ip: Option<String>,
    pub src_port: Option<u32>,
    pub dst_port: Option<u32>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    pub release_cause: Option<i32>,
    pub defect: Option<Defect>,
}

impl SyntheticCdr {
    /// Every raw identifier the record carries (for privacy scans).
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        [
            &self.calling_number,
            &self.called_number,
            &self.redirecting_number,
            &self.sip_uri,
            &self.imsi,
            &self.imei,
            &self.cell_id_start,
            &self.cell_id_end,
            &self.src_ip,
            &self.dst_ip,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
    }

    /// True if `msisdn` appears in any number role.
    pub fn involves_number(&self, msisdn: &str) -> bool {
        [&self.calling_number, &self.called_number, &self.redirecting_number].into_iter().flatten().any(|n| n == msisdn)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        let mut put = |key: &str, value: Value| {
            map.insert(key.to_string(), value);
        };
        put("record_id", self.record_id.clone().into());
        put("service", self.service.into());
        if let Some(d) = self.direction {
            put("direction", d.into());
        }
        let time = |t: DateTime<Utc>| Value::from(t.to_rfc3339_opts(SecondsFormat::Millis, true));
        if let Some(t) = self.start_time {
            put("start_time", time(t));
        }
        if let Some(t) = self.end_time {
            put("end_time", time(t));
        }
        for (key, value) in [
            ("calling_number", &self.calling_number),
            ("called_number", &self.called_number),
            ("redirecting_number", &self.redirecting_number),
            ("sip_uri", &self.sip_uri),
            ("imsi", &self.imsi),
            ("imei", &self.imei),
            ("cell_id_start", &self.cell_id_start),
            ("cell_id_end", &self.cell_id_end),
            ("src_ip", &self.src_ip),
            ("dst_ip", &self.dst_ip),
        ] {
            if let Some(v) = value {
                put(key, v.clone().into());
            }
        }
        for (key, value) in [("src_port", self.src_port.map(u64::from)), ("dst_port", self.dst_port.map(u64::from))] {
            if let Some(v) = value {
                put(key, v.into());
            }
        }
        if let Some(v) = self.bytes_up {
            put("bytes_up", v.into());
        }
        if let Some(v) = self.bytes_down {
            put("bytes_down", v.into());
        }
        if let Some(v) = self.release_cause {
            put("release_cause", v.into());
        }
        let mut bytes = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
        if self.defect == Some(Defect::MalformedJson) {
            bytes.truncate(bytes.len() / 2);
        }
        bytes
    }

    pub fn to_protobuf(&self) -> Vec<u8> {
        let service = match self.service {
            "voice" => proto::Service::Voice,
            "sms" => proto::Service::Sms,
            "mms" => proto::Service::Mms,
            "data" => proto::Service::Data,
            "voip" => proto::Service::Voip,
            "fax" => proto::Service::Fax,
            _ => proto::Service::Unspecified,
        };
        let direction = match self.direction {
            Some("mo") => proto::Direction::Mo,
            Some("mt") => proto::Direction::Mt,
            Some("forwarded") => proto::Direction::Forwarded,
            _ => proto::Direction::Unspecified,
        };
        let time = |t: DateTime<Utc>| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        };
        let message = proto::Cdr {
            record_id: self.record_id.clone(),
            service: service as i32,
            direction: direction as i32,
            start_time: self.start_time.map(time),
            end_time: self.end_time.map(time),
            calling_number: self.calling_number.clone(),
            called_number: self.called_number.clone(),
            redirecting_number: self.redirecting_number.clone(),
            sip_uri: self.sip_uri.clone(),
            imsi: self.imsi.clone(),
            imei: self.imei.clone(),
            cell_id_start: self.cell_id_start.clone(),
            cell_id_end: self.cell_id_end.clone(),
            src_ip: self.src_ip.clone(),
            dst_ip: self.dst_ip.clone(),
            src_port: self.src_port,
            dst_port: self.dst_port,
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            release_cause: self.release_cause,
        };
        let mut bytes = message.encode_to_vec();
        if self.defect == Some(Defect::MalformedJson) {
            // The Protobuf counterpart of truncated JSON: a cut message.
            bytes.truncate(bytes.len() / 2);
            bytes.push(0xff);
        }
        bytes
    }
}

/// Network elements that emit records, by service.
fn node(service: Service) -> &'static str {
    match service {
        Service::Voice | Service::Fax => "msc01",
        Service::Sms => "smsc01",
        Service::Mms => "mmsc01",
        Service::Data => "pgw01",
        Service::Voip => "ims01",
    }
}

/// Generates records.
#[derive(Debug)]
pub struct Generator {
    config: SynthConfig,
    rng: SmallRng,
    subscribers: Vec<Subscriber>,
    home_cells: Vec<String>,
    sequence: u64,
}

impl Generator {
    pub fn new(config: SynthConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let subscribers = (0..config.subscribers.max(2)).map(|i| subscriber(&mut rng, i)).collect();
        let home_cells = (0..500)
            .map(|_| format!("238-01-{}-{}", rng.random_range(100..2000), rng.random_range(1..268_435_455)))
            .collect();
        Generator { config, rng, subscribers, home_cells, sequence: 0 }
    }

    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    /// The next record.
    pub fn next_record(&mut self) -> SyntheticCdr {
        self.sequence += 1;
        let service = {
            let roll = self.rng.random_range(0..100);
            match roll {
                0..40 => Service::Voice,
                40..65 => Service::Sms,
                65..68 => Service::Mms,
                68..90 => Service::Data,
                90..98 => Service::Voip,
                _ => Service::Fax,
            }
        };
        let span = i64::from(self.config.days.max(1)) * 86_400_000;
        let start = self.config.until - Duration::milliseconds(self.rng.random_range(0..span));
        let a = self.pick_subscriber();
        let b = self.pick_subscriber();
        let mut cdr = SyntheticCdr {
            record_id: format!("{}-{:010}", node(service), self.sequence),
            service: service.as_str(),
            start_time: Some(start),
            ..SyntheticCdr::default()
        };
        let cell = self.cell(&a);
        cdr.cell_id_start = Some(cell.clone());
        cdr.imsi = Some(a.imsi.clone());
        cdr.imei = Some(a.imei.clone());
        match service {
            Service::Voice | Service::Fax => {
                let seconds = self.rng.random_range(1..1800);
                cdr.end_time = Some(start + Duration::seconds(seconds));
                cdr.direction = Some(if self.rng.random_bool(0.5) { "mo" } else { "mt" });
                cdr.calling_number = Some(a.msisdn.clone());
                cdr.called_number = Some(b.msisdn.clone());
                if self.rng.random_bool(0.05) {
                    cdr.direction = Some("forwarded");
                    cdr.redirecting_number = Some(self.pick_subscriber().msisdn);
                }
                cdr.cell_id_end = Some(if self.rng.random_bool(0.8) { cell } else { self.cell(&a) });
                cdr.release_cause = Some(if self.rng.random_bool(0.9) { 16 } else { 17 });
            }
            Service::Sms | Service::Mms => {
                cdr.direction = Some(if self.rng.random_bool(0.5) { "mo" } else { "mt" });
                cdr.calling_number = Some(a.msisdn.clone());
                cdr.called_number = Some(b.msisdn.clone());
                if service == Service::Mms {
                    cdr.bytes_up = Some(self.rng.random_range(10_000..600_000));
                }
            }
            Service::Data => {
                let seconds = self.rng.random_range(10..7200);
                cdr.end_time = Some(start + Duration::seconds(seconds));
                cdr.calling_number = Some(a.msisdn.clone());
                cdr.src_ip = Some(self.private_ip());
                cdr.src_port = Some(self.rng.random_range(1024..65535));
                cdr.dst_ip = Some(self.public_ip());
                cdr.dst_port = Some(if self.rng.random_bool(0.8) { 443 } else { 80 });
                cdr.bytes_up = Some(self.rng.random_range(1_000..50_000_000));
                cdr.bytes_down = Some(self.rng.random_range(1_000..500_000_000));
                cdr.cell_id_end = Some(self.cell(&a));
            }
            Service::Voip => {
                let seconds = self.rng.random_range(1..3600);
                cdr.end_time = Some(start + Duration::seconds(seconds));
                cdr.direction = Some("mo");
                cdr.calling_number = Some(a.msisdn.clone());
                cdr.called_number = Some(b.msisdn.clone());
                cdr.sip_uri = Some(a.sip_uri.clone());
                cdr.src_ip = Some(if self.rng.random_bool(0.3) { self.ipv6() } else { self.private_ip() });
                cdr.src_port = Some(5060);
                cdr.dst_ip = Some(self.public_ip());
                cdr.dst_port = Some(5060);
                cdr.release_cause = Some(16);
            }
        }
        if self.rng.random_bool(self.config.invalid_ratio.clamp(0.0, 1.0)) {
            self.spoil(&mut cdr);
        }
        cdr
    }

    fn spoil(&mut self, cdr: &mut SyntheticCdr) {
        let defect = match self.rng.random_range(0..5) {
            0 => Defect::MalformedJson,
            1 => Defect::BadNumber,
            2 => Defect::EndBeforeStart,
            3 => Defect::UnknownService,
            _ => Defect::MissingStartTime,
        };
        cdr.defect = Some(defect);
        match defect {
            Defect::MalformedJson => {}
            Defect::BadNumber => cdr.calling_number = Some("+45-12ab".into()),
            Defect::EndBeforeStart => cdr.end_time = cdr.start_time.map(|s| s - Duration::seconds(30)),
            Defect::UnknownService => cdr.service = "telex",
            Defect::MissingStartTime => cdr.start_time = None,
        }
    }

    fn pick_subscriber(&mut self) -> Subscriber {
        // A skewed choice: a fifth of the population makes most of the
        // traffic, so subscribers recur as they do in a real network.
        let n = self.subscribers.len();
        let index = if self.rng.random_bool(0.7) {
            self.rng.random_range(0..n.div_ceil(5))
        } else {
            self.rng.random_range(0..n)
        };
        self.subscribers[index].clone()
    }

    fn cell(&mut self, subscriber: &Subscriber) -> String {
        // Home subscribers roam abroad on 3% of records; inbound roamers
        // are on the home network.
        if !subscriber.roamer && self.rng.random_bool(0.03) {
            let (mcc, mnc) = [("240", "01"), ("262", "02"), ("244", "05")][self.rng.random_range(0..3)];
            format!("{mcc}-{mnc}-{}-{}", self.rng.random_range(1..65_535), self.rng.random_range(1..268_435_455))
        } else {
            self.home_cells[self.rng.random_range(0..self.home_cells.len())].clone()
        }
    }

    fn private_ip(&mut self) -> String {
        format!(
            "10.{}.{}.{}",
            self.rng.random_range(0..=255),
            self.rng.random_range(0..=255),
            self.rng.random_range(1..255)
        )
    }

    fn public_ip(&mut self) -> String {
        format!("203.0.113.{}", self.rng.random_range(1..255))
    }

    fn ipv6(&mut self) -> String {
        format!("2001:db8:{:x}::{:x}", self.rng.random_range(0..0xffff), self.rng.random_range(1..0xffff))
    }
}

fn subscriber(rng: &mut SmallRng, index: usize) -> Subscriber {
    // One in ten is an inbound roamer from Sweden or Germany.
    let roamer = index % 10 == 9;
    let (cc, mcc_mnc, ndc_digits) = if roamer {
        if rng.random_bool(0.5) { ("46", "24001", 9) } else { ("49", "26202", 10) }
    } else {
        ("45", "23801", 8)
    };
    let national: String = (0..ndc_digits)
        .map(|i| {
            if i == 0 { char::from(b'2' + rng.random_range(0..7)) } else { char::from(b'0' + rng.random_range(0..10)) }
        })
        .collect();
    let msin: String = (0..10).map(|_| char::from(b'0' + rng.random_range(0..10))).collect();
    let imei: String = (0..15).map(|_| char::from(b'0' + rng.random_range(0..10))).collect();
    Subscriber {
        msisdn: format!("+{cc}{national}"),
        imsi: format!("{mcc_mnc}{msin}"),
        imei,
        sip_uri: format!("sip:+{cc}{national}@ims.mnc001.mcc238.3gppnetwork.org"),
        roamer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{Encoding, ValidationContext, decode};
    use crate::model::TimestampMicros;

    #[test]
    fn generated_records_decode_unless_spoiled() {
        let until = Utc::now();
        let mut generator = Generator::new(SynthConfig { until, invalid_ratio: 0.05, ..SynthConfig::default() });
        let ctx = ValidationContext {
            now: TimestampMicros::from_datetime(until),
            max_clock_skew_micros: 0,
            oldest_retained: None,
        };
        let mut services = std::collections::HashSet::new();
        let mut spoiled = 0;
        for _ in 0..5_000 {
            let cdr = generator.next_record();
            for (encoding, bytes) in [(Encoding::Json, cdr.to_json()), (Encoding::Protobuf, cdr.to_protobuf())] {
                let result = decode(encoding, &bytes, &ctx);
                assert_eq!(result.is_ok(), cdr.defect.is_none(), "{:?} {:?}", cdr.defect, result.err());
            }
            services.insert(cdr.service);
            spoiled += usize::from(cdr.defect.is_some());
            assert!(!cdr.identifiers().any(|id| cdr.record_id.contains(id)));
        }
        assert!(spoiled > 100 && spoiled < 500, "{spoiled}");
        for service in Service::ALL {
            assert!(services.contains(service.as_str()), "{service:?} never generated");
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let until = Utc::now();
        let config = SynthConfig { until, ..SynthConfig::default() };
        let a: Vec<_> = {
            let mut g = Generator::new(config.clone());
            (0..100).map(|_| g.next_record().to_json()).collect()
        };
        let mut g = Generator::new(config);
        let b: Vec<_> = (0..100).map(|_| g.next_record().to_json()).collect();
        assert_eq!(a, b);
    }
}
