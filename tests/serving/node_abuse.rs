//! The DICOM node (`osteo receive`, a process) against full-size abuse from a peer that follows
//! the protocol: a 2 GiB instance, a study of 10,000 instances and an RLE bomb. Each is refused
//! with a DIMSE status or an `error` row that says why, the node's memory and spool stay
//! bounded, and nothing it logs holds patient data.

use crate::common::inproc::{InProc, registry};
use crate::common::*;
use crate::node::{
    StoreScp, free_port, left, listening, receive_process, rows_of, storescu, storescu_with,
};
use std::path::{Path, PathBuf};
use std::process::Command;

const FUSED: [(&str, &str); 1] = [("osteo-fused-v1", "backends = [\"ort\"]")];

/// Where the element with tag bytes `tag` (group and element, little endian, then the VR)
/// starts in `file`; the last one, since pixel data comes last.
fn element(file: &[u8], tag: &[u8]) -> usize {
    file.windows(tag.len())
        .rposition(|w| w == tag)
        .expect("the element is in the file")
}

/// A copy of the explicit-VR DICOM file `src` at `out` with Rows and Columns `side` and pixel
/// data declared `len` bytes long: the file is extended with zeros sparsely, so it takes no disk.
fn declared(src: &Path, out: &Path, side: u16, len: u32) {
    let mut b = std::fs::read(src).expect("read");
    for tag in [b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x11\x00US\x02\x00"] {
        let at = element(&b, tag) + 8;
        b[at..at + 2].copy_from_slice(&side.to_le_bytes());
    }
    let at = element(&b, b"\xe0\x7f\x10\x00OW\x00\x00") + 8;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
    b.truncate(at + 4);
    std::fs::write(out, &b).expect("write");
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .and_then(|f| f.set_len(b.len() as u64 + u64::from(len)))
        .expect("extend");
}

/// `n` copies of `src` in `dir`, each with its own SOP Instance UID (same length, so nothing
/// else in the file moves).
fn copies(src: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    let b = std::fs::read(src).expect("read");
    let at = element(&b, b"\x08\x00\x18\x00UI") + 6;
    let len = usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let uid = b[at + 2..at + 2 + len].to_vec();
    let uid = &uid[..uid.iter().rposition(|c| *c != 0).expect("a UID") + 1];
    // Where the UID's last five digits are: in the file meta and in the data set.
    let tails: Vec<usize> = (0..b.len() - uid.len())
        .filter(|&p| &b[p..p + uid.len()] == uid)
        .map(|p| p + uid.len() - 5)
        .collect();
    assert_eq!(
        tails.len(),
        2,
        "the UID is in the file meta and the data set"
    );
    std::fs::create_dir_all(dir).expect("mkdir");
    (0..n)
        .map(|i| {
            let tail = format!("{i:05}");
            let mut copy = b.clone();
            for &t in &tails {
                copy[t..t + 5].copy_from_slice(tail.as_bytes());
            }
            let path = dir.join(format!("{i:05}.dcm"));
            std::fs::write(&path, copy).expect("write");
            path
        })
        .collect()
}

/// Runs a dcmtk tool, failing the test with its output when it fails.
fn dcmtk(tool: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool).args(args).output().expect(tool);
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The peak resident memory of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_instance_a_10000_instance_study_and_an_rle_bomb_stay_within_bounds() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = StoreScp::start(free_port());
    let port = free_port();
    let log = dir.path().join("node.log");
    let mut node = receive_process(
        &server.url,
        dir.path(),
        port,
        pacs.port,
        2,
        &log,
        &["--max-instance-mib", "64", "--max-study-instances", "4096"],
    );
    listening(port).await;
    let slices = study(&dir.path().join("study"));
    let spool = dir.path().join("spool");
    let results = dir.path().join("results.csv");

    // A 2 GiB instance (a 32768 x 32768 slice) is read to its end and refused; no file is left.
    let big = dir.path().join("big.dcm");
    declared(&slices[0], &big, 32768, 1 << 31);
    let sent = storescu(port, std::slice::from_ref(&big)).await;
    assert!(
        text(&sent).contains("Refused: OutOfResources"),
        "{}",
        text(&sent)
    );
    assert_eq!(left(&spool), 0, "nothing of the large instance is kept");
    let incoming = std::fs::read_dir(spool.join("incoming")).expect("incoming");
    assert_eq!(incoming.count(), 0, "its spool file is deleted");

    // 10,000 instances of one study: 4096 kept, 5904 refused, and the study is not graded.
    let many = copies(&slices[0], &dir.path().join("many"), 10_000);
    let sent = storescu_with(port, &["-nh"], &[dir.path().join("many")]).await;
    let refused = text(&sent).matches("Refused: OutOfResources").count();
    assert_eq!(refused, many.len() - 4096, "{}", text(&sent));
    let row = rows_of(&results, 1, false).await.remove(0);
    assert_eq!(row[1], "error", "{row:?}");
    assert!(
        row[6].contains("incomplete study") && row[6].contains("--max-study-instances (4096)"),
        "{row:?}"
    );

    // An RLE bomb: a few kilobytes of runs declaring 65535 x 65535 slices (8 GiB each). The
    // node keeps them as they are; the server refuses them before decoding.
    let rle = dir.path().join("rle");
    std::fs::create_dir_all(&rle).expect("mkdir");
    for (i, s) in slices.iter().take(3).enumerate() {
        let out = rle.join(format!("{i}.dcm"));
        dcmtk("dcmcrle", &[s.as_os_str(), out.as_os_str()]);
        dcmtk(
            "dcmodify",
            &[
                "-nb".as_ref(),
                "-m".as_ref(),
                "Rows=65535".as_ref(),
                "-m".as_ref(),
                "Columns=65535".as_ref(),
                "-m".as_ref(),
                "StudyInstanceUID=2.25.4242".as_ref(),
                out.as_os_str(),
            ],
        );
        assert!(std::fs::metadata(&out).expect("rle").len() < 64 << 10);
    }
    let sent = storescu_with(port, &["-xr"], &[rle]).await;
    assert!(sent.status.success(), "{}", text(&sent));
    let row = rows_of(&results, 2, false).await.remove(1);
    assert_eq!((row[0].as_str(), row[1].as_str()), ("2.25.4242", "error"));
    assert!(
        row[6].contains("RESOURCE_EXHAUSTED") && row[6].contains("Rows x Columns"),
        "{row:?}"
    );
    assert!(pacs.received().is_empty(), "no SR for either");

    // More than 2 GiB and 10,000 instances passed through a node that never held 256 MiB.
    let peak = peak_kib(node.id());
    assert!(peak < 256 << 10, "peak resident memory {peak} KiB");
    node.kill().expect("kill");
    let _ = node.wait();
    let logs = std::fs::read_to_string(&log).expect("log");
    for secret in [PATIENT_NAME, PATIENT_ID, "2.25.4242"] {
        assert!(!logs.contains(secret), "the log holds {secret}: {logs}");
    }
}
