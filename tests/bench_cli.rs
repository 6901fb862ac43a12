//! `sapphire bench` as CI runs it: a real process writing its report files.

use std::process::Command;

#[test]
fn bench_writes_the_report_files_in_the_documented_shape() {
    let out = std::env::temp_dir().join(format!("sapphire-bench-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_sapphire")).args(["bench", "--smoke", "--out"]).arg(&out).output().expect("sapphire runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "exit {:?}\n{stderr}", run.status);
    assert!(stderr.contains("] ") && stderr.contains("hop ring"), "a progress bar on stderr: {stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for heading in ["## Machine", "One hop", "The engine", "Journal append", "End to end", "## Ratios"] {
        assert!(md.contains(heading), "report.md has {heading:?}");
    }
    assert!(md.contains("Steal time") && md.contains("Pinning"), "the machine is described");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("JSON");
    let cases = json["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for c in cases {
        assert!(c["name"].is_string(), "{c}");
        for key in ["p50_ns", "p99_ns", "p999_ns", "max_ns", "events_per_sec"] {
            assert!(c[key].is_u64() || c[key].is_f64() || c[key].is_null(), "{key} in {c}");
            assert!(c.get(key).is_some(), "{key} present in {c}");
        }
    }
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    for n in [
        "hop_ring_paced_1us",
        "hop_tokio_mpsc_flood",
        "engine_fused_paced_5us_end_to_end",
        "engine_tokio_paced_5us_end_to_end",
        "feed_parse_ours",
        "journal_append_every_record",
    ] {
        assert!(names.contains(&n), "case {n} in {names:?}");
    }
    let ratios = json["ratios"].as_object().expect("ratios object");
    for r in
        ["engine_fused_vs_crossbeam_p50", "engine_split_vs_tokio_p50", "hop_ring_vs_tokio_mpsc_p50", "feed_parse_ours_vs_serde_json_rate"]
    {
        assert!(ratios.get(r).is_some_and(serde_json::Value::is_f64), "ratio {r} in {ratios:?}");
    }
    assert!(json["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    assert!(json["machine"]["cpu_model"].is_string());
    assert!(json["pinning"]["held"].is_boolean());

    // One .hgrm per latency case, in HdrHistogram's text format.
    let hgrm = std::fs::read_to_string(out.join("hgrm/hop_ring_paced_1us.hgrm")).expect("hgrm file");
    assert!(hgrm.contains("1/(1-Percentile)") && hgrm.contains("#[Max     ="), "{hgrm}");
    let with_latency = cases.iter().filter(|c| !c["p50_ns"].is_null()).count();
    assert!(std::fs::read_dir(out.join("hgrm")).unwrap().count() >= with_latency);
    for plot in ["hop_paced_1us", "engine", "e2e"] {
        let bytes = std::fs::read(out.join(format!("plots/{plot}.png"))).expect("plot");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(md.contains(&format!("plots/{plot}.png")), "report.md links {plot}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_unusable_output_directory_is_a_clear_error() {
    let file = std::env::temp_dir().join(format!("sapphire-bench-cli-file-{}", std::process::id()));
    std::fs::write(&file, b"not a directory").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_sapphire")).args(["bench", "--smoke", "--out"]).arg(&file).output().expect("sapphire runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("output directory") && !stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn only_runs_the_named_parts_and_refuses_unknown_ones() {
    let out = std::env::temp_dir().join(format!("sapphire-bench-cli-only-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_sapphire"))
        .args(["bench", "--smoke", "--only", "feed,journal", "--out"])
        .arg(&out)
        .output()
        .expect("sapphire runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let groups: std::collections::BTreeSet<&str> = json["cases"].as_array().unwrap().iter().filter_map(|c| c["group"].as_str()).collect();
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), ["feed", "journal"]);
    let _ = std::fs::remove_dir_all(&out);

    let run =
        Command::new(env!("CARGO_BIN_EXE_sapphire")).args(["bench", "--only", "warp", "--out"]).arg(&out).output().expect("sapphire runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--only") && stderr.contains("warp"), "{stderr}");
    assert!(!out.exists(), "nothing written for a refused command");
}
