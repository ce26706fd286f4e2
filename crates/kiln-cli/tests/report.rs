//! `kiln report` checked in a real browser: Debian's headless Chromium opens the page it
//! writes (from a file, no server), and a small harness page reads back what the browser laid
//! out — each DAG node's status and the colour it was painted, each plotted point's series,
//! category, value and position — which must match what `kiln show -o json` says of the run.
//!
//! The runs are those of `tests/golden/history/pipeline.yaml`: a fan-out over two learning
//! rates whose training (a process-backend step) reports `accuracy` and `loss`; the second run
//! changes `epochs`, so `prep` comes from the cache; the third (`epochs=0`) fails.
//!
//! Chromium is found at `$KILN_CHROMIUM`, else `/usr/bin/chromium` (`scripts/setup.sh`
//! installs it); without it these tests fail and say so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod support;

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/history")
}

fn kiln(work: &Path, args: &[&str]) -> Output {
    support::kiln()
        .args(args)
        .env("KILN_HOME", work.join(".kiln"))
        .current_dir(work)
        .output()
        .expect("kiln runs")
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Three runs in a fresh folder (epochs 20, 30, then 0, which fails); their ids, oldest first.
fn three_runs() -> (tempfile::TempDir, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    for file in ["pipeline.yaml", "train.py"] {
        std::fs::copy(case_dir().join(file), work.path().join(file)).unwrap();
    }
    for (epochs, exit) in [("20", 0), ("30", 0), ("0", 1)] {
        let out = kiln(
            work.path(),
            &["run", "pipeline.yaml", "-p", &format!("epochs={epochs}")],
        );
        assert_eq!(
            out.status.code(),
            Some(exit),
            "run with epochs={epochs}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs: Value =
        serde_json::from_slice(&ok(kiln(work.path(), &["runs", "-o", "json"]), "runs")).unwrap();
    let ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{runs}");
    (work, ids)
}

/// What `kiln show RUN -o json` says of each step, by label.
fn shown_steps(work: &Path, run: &str) -> BTreeMap<String, Value> {
    let shown: Value = serde_json::from_slice(&ok(
        kiln(work, &["show", run, "-o", "json"]),
        "show -o json",
    ))
    .unwrap();
    shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["label"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn chromium() -> PathBuf {
    let path =
        std::env::var_os("KILN_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        path.exists(),
        "no Chromium at {}: run scripts/setup.sh (it installs Debian's chromium) or set KILN_CHROMIUM",
        path.display()
    );
    path
}

/// Runs headless Chromium on `page` with `args`, in a profile folder of its own under `work`;
/// stops it after two minutes should it hang.
fn browse(work: &Path, args: &[&str], page: &Path) -> Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join("chromium-profile").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium starts");
    assert!(
        out.status.success(),
        "chromium {args:?}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A page that loads `report` in a frame and, once it is laid out, writes what the browser
/// made of it as JSON into `<pre id="out">`, which `--dump-dom` then prints.
const HARNESS: &str = r##"<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<iframe id="page" src="report.html" width="1200" height="2000"></iframe>
<pre id="out">not loaded</pre>
<script>
document.getElementById("page").addEventListener("load", () => {
  const doc = document.getElementById("page").contentDocument;
  const box = (el) => { const r = el.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const nodes = [...doc.querySelectorAll("#dag g.node")].map((g) => ({
    step: g.dataset.step, label: g.dataset.label, status: g.dataset.status,
    fill: doc.defaultView.getComputedStyle(g.querySelector("rect")).fill,
    box: box(g.querySelector("rect")),
  }));
  const points = [...doc.querySelectorAll("circle.point")].map((c) => ({
    series: c.dataset.series, x: c.dataset.x, value: Number(c.dataset.value),
    box: box(c), chart: box(c.ownerSVGElement), chartSeries: c.ownerSVGElement.dataset.series,
  }));
  const edges = doc.querySelectorAll("#dag path.edge").length;
  const metrics = [...doc.querySelectorAll("#metrics tr")].map((tr) => [...tr.children].map((td) => td.textContent));
  document.getElementById("out").textContent = JSON.stringify({
    title: doc.title, status: doc.getElementById("run-status").textContent,
    nodes, points, edges, metrics, scripts: doc.scripts.length,
  });
});
</script></body></html>
"##;

/// What the browser laid out of `report` (HTML text).
fn laid_out(work: &Path, report: &[u8]) -> Value {
    let dir = work.join("browse");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.html"), report).unwrap();
    std::fs::write(dir.join("harness.html"), HARNESS).unwrap();
    let out = browse(
        work,
        &[
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ],
        &dir.join("harness.html"),
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    let start =
        dom.find("<pre id=\"out\">").expect("the harness's output") + "<pre id=\"out\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the harness wrote {text:?}: {e}"))
}

fn report(work: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "-"]);
    ok(kiln(work, &all), "kiln report")
}

#[test]
fn the_browser_draws_the_dag_by_status_and_the_points_of_each_item() {
    let (work, ids) = three_runs();
    let work = work.path();
    let html = report(work, &[&ids[1]]);
    let page = laid_out(work, &html);
    assert_eq!(page["scripts"], 0, "the page runs no script");
    assert_eq!(page["status"], "succeeded");
    assert!(
        page["title"].as_str().unwrap().starts_with("sweep — run "),
        "{}",
        page["title"]
    );

    // Every step is a node of the status `kiln show` gives, painted in that status's colour.
    let shown = shown_steps(work, &ids[1]);
    let nodes = page["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), shown.len(), "{nodes:?}");
    let mut fill_of = BTreeMap::new();
    for node in nodes {
        let label = node["label"].as_str().unwrap();
        let step = &shown[label];
        let status = step["last"]["status"].as_str().unwrap();
        assert_eq!(node["status"], status, "{label}: {node} / {step}");
        assert!(node["box"]["w"].as_f64().unwrap() > 50.0, "{node}");
        fill_of.insert(status.to_owned(), node["fill"].as_str().unwrap().to_owned());
    }
    assert_eq!(fill_of["cached"], "rgb(221, 244, 255)", "{fill_of:?}");
    assert_eq!(fill_of["succeeded"], "rgb(218, 251, 225)", "{fill_of:?}");
    assert_eq!(page["edges"], 2, "prep → each train instance");

    // The points: one per item and metric, with the values the run recorded.
    let mut expected = BTreeMap::new();
    for (label, step) in &shown {
        let Some(item) = label
            .strip_prefix("train[")
            .and_then(|l| l.strip_suffix(']'))
        else {
            continue;
        };
        for (metric, value) in step["last"]["metrics"].as_object().unwrap() {
            expected.insert((metric.clone(), item.to_owned()), value.as_f64().unwrap());
        }
    }
    assert_eq!(expected.len(), 4, "{expected:?}");
    let points = page["points"].as_array().unwrap();
    let got: BTreeMap<(String, String), f64> = points
        .iter()
        .map(|p| {
            (
                (
                    p["series"].as_str().unwrap().to_owned(),
                    p["x"].as_str().unwrap().to_owned(),
                ),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        expected[&("accuracy".to_owned(), "lr=0.1".to_owned())],
        1.0 - 0.1 / 30.0
    );

    // Drawn where they belong: inside their own chart, the items left to right in order, a
    // higher value higher up.
    for p in points {
        let (b, c) = (&p["box"], &p["chart"]);
        assert_eq!(p["chartSeries"], p["series"], "{p}");
        assert!(b["w"].as_f64().unwrap() > 4.0, "a point is visible: {p}");
        for (at, size) in [("x", "w"), ("y", "h")] {
            let (v, lo) = (b[at].as_f64().unwrap(), c[at].as_f64().unwrap());
            assert!(
                v >= lo && v + b[size].as_f64().unwrap() <= lo + c[size].as_f64().unwrap(),
                "{p}"
            );
        }
    }
    let at = |series: &str, x: &str| {
        let p = points
            .iter()
            .find(|p| p["series"] == series && p["x"] == x)
            .unwrap();
        (
            p["box"]["x"].as_f64().unwrap(),
            p["box"]["y"].as_f64().unwrap(),
        )
    };
    for series in ["accuracy", "loss"] {
        assert!(
            at(series, "lr=0.1").0 < at(series, "lr=0.2").0,
            "{series}: items in order"
        );
    }
    // accuracy falls with the learning rate, loss rises.
    assert!(at("accuracy", "lr=0.1").1 < at("accuracy", "lr=0.2").1);
    assert!(at("loss", "lr=0.1").1 > at("loss", "lr=0.2").1);

    // The table has a row per reporting step.
    let table = page["metrics"].as_array().unwrap();
    assert_eq!(table[0], serde_json::json!(["step", "accuracy", "loss"]));
    assert_eq!(table.len(), 3, "{table:?}");
}

#[test]
fn across_runs_plots_a_point_per_run_and_failures_show_red() {
    let (work, ids) = three_runs();
    let work = work.path();
    let short = |id: &String| id[..13].to_owned();

    let html = report(
        work,
        &[&ids[2], "--across", "runs", "--metrics", "accuracy"],
    );
    let page = laid_out(work, &html);
    assert_eq!(page["status"], "failed");
    let failed: Vec<&Value> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{}", page["nodes"]);
    assert!(
        failed.iter().all(|n| n["fill"] == "rgb(255, 235, 233)"),
        "{failed:?}"
    );

    // Runs 1 and 2 report accuracy for both items; run 3 reports none. One chart per item.
    let points = page["points"].as_array().unwrap();
    let mut got: Vec<(String, String, f64)> = points
        .iter()
        .map(|p| {
            (
                p["series"].as_str().unwrap().to_owned(),
                p["x"].as_str().unwrap().to_owned(),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut expected = Vec::new();
    for (lr, series) in [
        (0.1, "train[lr=0.1].accuracy"),
        (0.2, "train[lr=0.2].accuracy"),
    ] {
        for (run, epochs) in [(&ids[0], 20.0), (&ids[1], 30.0)] {
            expected.push((series.to_owned(), short(run), 1.0 - lr / epochs));
        }
    }
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got, expected);
    let x_of = |run: &String| {
        points
            .iter()
            .find(|p| p["x"] == short(run).as_str())
            .unwrap()["box"]["x"]
            .as_f64()
            .unwrap()
    };
    assert!(x_of(&ids[0]) < x_of(&ids[1]), "older runs to the left");
}

#[test]
fn the_page_stands_alone_and_is_written_whole() {
    let (work, ids) = three_runs();
    let work = work.path();
    let html = String::from_utf8(report(work, &[&ids[1]])).unwrap();
    // Nothing is loaded from elsewhere: the only URL is SVG's namespace name.
    for marker in ["<script", "<link", " src=", "url(http", "@import"] {
        assert!(!html.contains(marker), "the page has {marker}");
    }
    assert_eq!(
        html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .matches("http")
            .count(),
        0
    );
    // The same run gives the same page, to a file as to stdout; the default name has the id.
    let again = kiln(work, &["report", &ids[1]]);
    let written = ok(again, "kiln report to the default file");
    assert!(written.is_empty());
    let default = work.join(format!("kiln-report-{}.html", &ids[1][..13]));
    assert_eq!(std::fs::read_to_string(&default).unwrap(), html);

    // A bad choice of metric writes nothing and names the metrics there are.
    let target = work.join("bad.html");
    let out = kiln(
        work,
        &[
            "report",
            &ids[1],
            "--metrics",
            "acuracy",
            "-o",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no metric `acuracy`") && err.contains("accuracy, loss"),
        "{err}"
    );
    assert!(!target.exists());
    let leftovers: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // And Chromium paints it: a screenshot of the window's size.
    let shot = work.join("report.png");
    browse(
        work,
        &[
            "--window-size=1200,900",
            &format!("--screenshot={}", shot.display()),
        ],
        &default,
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (1200, 900));
    assert!(
        png.len() > 10_000,
        "a blank page compresses to less: {} bytes",
        png.len()
    );
}
