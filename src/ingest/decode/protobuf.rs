//! The Protobuf encoding: `cdrvault.v1.Cdr` from `proto/cdrvault/v1/cdr.proto`.

use std::borrow::Cow;

use prost::Message;

use super::{RawEnum, RawRecord, RawTime, Refusal, RefuseReason};
use crate::model::{Direction, Service};
use crate::proto;

pub(super) fn parse(payload: &[u8]) -> Result<RawRecord<'static>, Refusal> {
    let cdr = proto::Cdr::decode(payload).map_err(|_| Refusal::new(RefuseReason::MalformedPayload))?;
    let service = match proto::Service::try_from(cdr.service) {
        Ok(proto::Service::Unspecified) => None,
        Ok(s) => Some(RawEnum::Known(service_from_proto(s))),
        Err(_) => Some(RawEnum::Unknown),
    };
    let direction = match proto::Direction::try_from(cdr.direction) {
        Ok(proto::Direction::Unspecified) => None,
        Ok(proto::Direction::Mo) => Some(RawEnum::Known(Direction::Mo)),
        Ok(proto::Direction::Mt) => Some(RawEnum::Known(Direction::Mt)),
        Ok(proto::Direction::Forwarded) => Some(RawEnum::Known(Direction::Forwarded)),
        Err(_) => Some(RawEnum::Unknown),
    };
    let time = |t: Option<prost_types::Timestamp>| {
        t.map(|t| {
            // Nanoseconds outside 0..1e9 make the timestamp invalid; an
            // out-of-range count maps to a value far in the future, which
            // validation refuses.
            if !(0..1_000_000_000).contains(&t.nanos) {
                RawTime::Micros(i64::MAX)
            } else {
                RawTime::Micros(t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos / 1_000)))
            }
        })
    };
    let text = |s: Option<String>| s.map(Cow::Owned);
    Ok(RawRecord {
        record_id: (!cdr.record_id.is_empty()).then_some(Cow::Owned(cdr.record_id)),
        service,
        direction,
        start_time: time(cdr.start_time),
        end_time: time(cdr.end_time),
        identifiers: [
            text(cdr.calling_number),
            text(cdr.called_number),
            text(cdr.redirecting_number),
            text(cdr.sip_uri),
            text(cdr.imsi),
            text(cdr.imei),
            text(cdr.cell_id_start),
            text(cdr.cell_id_end),
            text(cdr.src_ip),
            text(cdr.dst_ip),
        ],
        src_port: cdr.src_port.map(i64::from),
        dst_port: cdr.dst_port.map(i64::from),
        bytes_up: cdr.bytes_up.map(|v| i64::try_from(v).unwrap_or(-1)),
        bytes_down: cdr.bytes_down.map(|v| i64::try_from(v).unwrap_or(-1)),
        release_cause: cdr.release_cause.map(i64::from),
    })
}

pub(crate) fn service_from_proto(service: proto::Service) -> Service {
    match service {
        proto::Service::Voice | proto::Service::Unspecified => Service::Voice,
        proto::Service::Sms => Service::Sms,
        proto::Service::Mms => Service::Mms,
        proto::Service::Data => Service::Data,
        proto::Service::Voip => Service::Voip,
        proto::Service::Fax => Service::Fax,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{Encoding, decode, tests::ctx};

    #[test]
    fn protobuf_and_json_decode_to_the_same_record() {
        let json = r#"{"record_id":"pgw-7","service":"data","start_time":"2026-11-24T09:00:00.250Z",
            "end_time":"2026-11-24T09:10:00Z","imsi":"238011234567890","src_ip":"::ffff:10.1.2.3",
            "src_port":40000,"bytes_up":1200,"bytes_down":98000,"cell_id_start":"238-01-7-99"}"#;
        let message = proto::Cdr {
            record_id: "pgw-7".into(),
            service: proto::Service::Data as i32,
            start_time: Some(prost_types::Timestamp { seconds: 1_795_510_800, nanos: 250_000_000 }),
            end_time: Some(prost_types::Timestamp { seconds: 1_795_511_400, nanos: 0 }),
            imsi: Some("238011234567890".into()),
            src_ip: Some("::ffff:10.1.2.3".into()),
            src_port: Some(40000),
            bytes_up: Some(1200),
            bytes_down: Some(98000),
            cell_id_start: Some("238-01-7-99".into()),
            ..Default::default()
        };
        let bytes = message.encode_to_vec();
        let from_json = decode(Encoding::Json, json.as_bytes(), &ctx()).unwrap();
        let from_proto = decode(Encoding::Protobuf, &bytes, &ctx()).unwrap();
        assert_eq!(from_json, from_proto);
    }

    #[test]
    fn garbage_is_malformed() {
        let refusal = decode(Encoding::Protobuf, &[0xff, 0xff, 0xff], &ctx()).unwrap_err();
        assert_eq!(refusal.reason, RefuseReason::MalformedPayload);
        let no_service = proto::Cdr { record_id: "x".into(), ..Default::default() }.encode_to_vec();
        assert_eq!(decode(Encoding::Protobuf, &no_service, &ctx()).unwrap_err().reason, RefuseReason::MissingField);
    }
}
