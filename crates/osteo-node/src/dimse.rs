//! DIMSE command sets (PS3.7 §9.3, §E): group 0000 elements in implicit VR little endian, read
//! from a bounded buffer and written for the C-ECHO and C-STORE requests and responses this node
//! exchanges.

use crate::error::NodeError;

/// C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// C-ECHO-RQ.
pub const C_ECHO_RQ: u16 = 0x0030;
/// C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType value: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;
/// Largest command set accepted (a real one is a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// Status: success.
pub const SUCCESS: u16 = 0x0000;
/// Status: refused, out of resources (the spool is full, or the instance or study too large).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Status: error, cannot understand (the data set could not be read).
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Status: refused, SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Status: unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

/// The fields of a command set this node reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// CommandField (0000,0100).
    pub field: u16,
    /// MessageID (0000,0110).
    pub message_id: u16,
    /// MessageIDBeingRespondedTo (0000,0120).
    pub responding_to: u16,
    /// AffectedSOPClassUID (0000,0002).
    pub sop_class: String,
    /// AffectedSOPInstanceUID (0000,1000).
    pub sop_instance: String,
    /// CommandDataSetType (0000,0800): whether a data set follows.
    pub data_set_type: u16,
    /// Status (0000,0900).
    pub status: u16,
}

impl Command {
    /// Whether a data set follows the command.
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }

    /// Reads a command set; unknown elements are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Self, NodeError> {
        let bad = |why: &str| NodeError::Protocol(format!("a DIMSE command set {why}"));
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(bad("is larger than 64 KiB"));
        }
        let mut c = Command::default();
        let mut at = 0;
        while at < bytes.len() {
            let head = bytes
                .get(at..at + 8)
                .ok_or_else(|| bad("ends inside an element"))?;
            let group = u16::from_le_bytes([head[0], head[1]]);
            let element = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let value = bytes
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| bad("has an element longer than the command"))?;
            at += 8 + len;
            if group != 0 {
                return Err(bad("holds an element outside group 0000"));
            }
            let u16_value = || {
                value
                    .get(..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .ok_or_else(|| bad("has a US element shorter than 2 bytes"))
            };
            let uid = || {
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .to_string()
            };
            match element {
                0x0002 => c.sop_class = uid(),
                0x0100 => c.field = u16_value()?,
                0x0110 => c.message_id = u16_value()?,
                0x0120 => c.responding_to = u16_value()?,
                0x0800 => c.data_set_type = u16_value()?,
                0x0900 => c.status = u16_value()?,
                0x1000 => c.sop_instance = uid(),
                _ => {}
            }
        }
        if c.field == 0 {
            return Err(bad("has no CommandField"));
        }
        Ok(c)
    }
}

/// Builds a command set element by element (in ascending tag order) and prefixes the group
/// length.
struct Writer(Vec<u8>);

impl Writer {
    fn element(&mut self, element: u16, value: &[u8]) {
        self.0.extend_from_slice(&0u16.to_le_bytes());
        self.0.extend_from_slice(&element.to_le_bytes());
        self.0
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.0.extend_from_slice(value);
    }

    fn us(&mut self, element: u16, v: u16) {
        self.element(element, &v.to_le_bytes());
    }

    fn ui(&mut self, element: u16, uid: &str) {
        let mut v = uid.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        self.element(element, &v);
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

/// A response (C-ECHO-RSP or C-STORE-RSP) to `rq` with `status`.
pub fn response(rq: &Command, field: u16, status: u16) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    if !rq.sop_class.is_empty() {
        w.ui(0x0002, &rq.sop_class);
    }
    w.us(0x0100, field);
    w.us(0x0120, rq.message_id);
    w.us(0x0800, NO_DATA_SET);
    w.us(0x0900, status);
    if !rq.sop_instance.is_empty() {
        w.ui(0x1000, &rq.sop_instance);
    }
    w.finish()
}

/// A C-STORE-RQ of instance `sop_instance` of class `sop_class`, a data set following.
pub fn store_request(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.ui(0x0002, sop_class);
    w.us(0x0100, C_STORE_RQ);
    w.us(0x0110, message_id);
    w.us(0x0700, 0); // Priority: medium
    w.us(0x0800, 0x0000);
    w.ui(0x1000, sop_instance);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_and_its_response_answers_it() {
        let rq =
            Command::parse(&store_request(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")).expect("parse");
        assert_eq!(rq.field, C_STORE_RQ);
        assert_eq!(rq.message_id, 7);
        assert_eq!(rq.sop_class, "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(rq.sop_instance, "1.2.3");
        assert!(rq.has_data_set());
        let rsp = Command::parse(&response(&rq, C_STORE_RSP, OUT_OF_RESOURCES)).expect("rsp");
        assert_eq!(
            (rsp.field, rsp.responding_to, rsp.status),
            (C_STORE_RSP, 7, OUT_OF_RESOURCES)
        );
        assert!(!rsp.has_data_set());
        assert_eq!(rsp.sop_instance, "1.2.3");
    }

    #[test]
    fn truncated_and_oversized_command_sets_are_refused() {
        let rq = store_request(1, "1.2", "1.2.3");
        assert!(Command::parse(&rq[..rq.len() - 3]).is_err());
        assert!(Command::parse(&vec![0u8; MAX_COMMAND_BYTES + 1]).is_err());
        // A declared length of 4 GiB in 12 bytes.
        let mut huge = vec![0, 0, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0; 4]);
        assert!(Command::parse(&huge).is_err());
        assert!(Command::parse(&[]).is_err(), "no CommandField");
    }
}
