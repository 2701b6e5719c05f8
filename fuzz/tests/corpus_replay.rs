//! Replays `corpus/<target>/*` and deterministic mutations of every file through the target
//! bodies on stable, and keeps the generated seeds in sync with [`vgpu_fuzz::seeds`].
//!
//! Set `VGPU_FUZZ_BLESS=1` to (re)write the generated seed files.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    reason = "tests"
)]

use std::fs;
use std::path::{Path, PathBuf};

use vgpu_fuzz::{TARGETS, Target};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Files of a corpus directory, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Deterministic mutations: truncations, bit flips spread over the input, byte overwrites,
/// an inverted first byte and an appended copy of the start.
fn mutations(data: &[u8]) -> Vec<Vec<u8>> {
    let len = data.len();
    let mut out = Vec::new();
    for cut in [len / 2, len.saturating_sub(1), len * 3 / 4, 1.min(len)] {
        out.push(data[..cut].to_vec());
    }
    if len == 0 {
        return out;
    }
    for i in 0..8 {
        let mut m = data.to_vec();
        m[i * len / 8] ^= 1 << i;
        out.push(m);
    }
    for (pos, value) in [(len / 3, 0xFF), (2 * len / 3, 0x00), (len - 1, 0x80)] {
        let mut m = data.to_vec();
        m[pos] = value;
        out.push(m);
    }
    let mut m = data.to_vec();
    m[0] ^= 0xFF;
    out.push(m);
    let mut m = data.to_vec();
    m.extend_from_slice(&data[..len.min(64)]);
    out.push(m);
    out
}

fn replay(target: &Target) -> usize {
    let files = corpus(target.name);
    assert!(!files.is_empty(), "corpus of {} is empty", target.name);
    let mut runs = 0;
    for (name, data) in &files {
        let run = |input: &[u8], what: &str| {
            let result = std::panic::catch_unwind(|| (target.body)(input));
            if result.is_err() {
                panic!(
                    "{} failed on {name} ({what}); input ({} bytes): {:02x?}",
                    target.name,
                    input.len(),
                    &input[..input.len().min(256)]
                );
            }
        };
        run(data, "as is");
        runs += 1;
        for (i, m) in mutations(data).iter().enumerate() {
            run(m, &format!("mutation {i}"));
            runs += 1;
        }
    }
    runs
}

#[test]
fn generated_seeds_are_checked_in() {
    let bless = std::env::var_os("VGPU_FUZZ_BLESS").is_some_and(|v| v == "1");
    for s in vgpu_fuzz::seeds::all() {
        let path = corpus_dir(s.target).join(&s.name);
        if bless {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &s.data).unwrap();
        }
        let on_disk = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with VGPU_FUZZ_BLESS=1 to write the seeds)",
                path.display()
            )
        });
        assert!(
            on_disk == s.data,
            "{} differs from seeds::all() (VGPU_FUZZ_BLESS=1 rewrites it)",
            path.display()
        );
    }
}

#[test]
fn corpus_is_small() {
    let total: usize = TARGETS
        .iter()
        .flat_map(|t| corpus(t.name))
        .map(|(_, d)| d.len())
        .sum();
    assert!(total < 2 << 20, "corpus is {total} bytes");
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for t in TARGETS {
        let bin = root.join("fuzz_targets").join(format!("{}.rs", t.name));
        let src = fs::read_to_string(&bin).unwrap();
        assert!(
            src.contains(&format!("vgpu_fuzz::{}(data)", t.name)),
            "{}",
            bin.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "[[bin]] {}",
            t.name
        );
        assert!(corpus_dir(t.name).is_dir(), "corpus/{}", t.name);
    }
}

#[test]
fn mutations_are_deterministic() {
    let m = mutations(&[1, 2, 3, 4]);
    assert_eq!(m.len(), 17);
    assert_eq!(m[0], vec![1, 2]);
    assert_eq!(m[4], vec![0, 2, 3, 4]);
    assert_eq!(m[16], vec![1, 2, 3, 4, 1, 2, 3, 4]);
    assert_eq!(mutations(&[]), vec![Vec::<u8>::new(); 4]);
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let t = TARGETS.iter().find(|t| t.name == stringify!($name)).unwrap();
                assert!(replay(t) >= 5);
            }
        )*
    };
}

replay_tests!(
    migstream_decode,
    migstream_roundtrip,
    migstream_segmented,
    migstream_auth,
    gtt_runs,
    mmio_access,
    mmio_restore,
    engines_restore,
    vgpu_restore,
    gtt_walk,
    gmem_ops,
);

/// Regression for a finding of `cargo fuzz run gtt_runs`: with the hidden slice directly after
/// the aperture (partition 1: aperture indices 0..16, hidden 16..24), `gtt::validate_runs`
/// accepted a LINEAR run of 16 entries at index 7, which leaves the aperture, although
/// `gtt::runs` requires every run to lie inside one slice. Fixed in `gtt::runs`.
#[test]
fn gtt_run_crossing_adjacent_slices() {
    let input = [
        0x81, 0xFF, // partition 1, gen8, 1 Mi guest frames; 0xFF: 279-byte save buffers
        0x07, 0, 0, 0, // start index 7
        0x10, 0, 0, 0, // count 16
        0x01, 0, 0, 0, 0, 0, 0, 0, // LINEAR, reserved
        0x01, 0x00, 0x04, 0x2C, 0x00, 0x00, 0x00, 0x00, // template: present, frame 0x2C040
    ];
    vgpu_fuzz::gtt_runs(&input);
}
