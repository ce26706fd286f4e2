//! Runs submitted to a real server: missing blobs refused by digest, a pinned plan run by the
//! server's engine with its record in SQL, its events as Server-Sent Events in order with
//! resume, idempotent retries, a second submission all cached, 1,000 readers of one stream
//! at once, each getting every event in order, and 50 submissions at once from 10 clients.

mod fixture;

use std::path::Path;
use std::sync::Arc;

use fixture::{DATA, PIPELINE, Writes, plan_in};
use kiln_cas::{BlobStore, Digest, LocalStore};
use kiln_engine::{Engine, EngineConfig, Executors, MetadataStore, StateDir};
use kiln_server::runs::Runs;
use kiln_server::{Db, Server, ServerOptions, SqlMetadata, Tokens};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The submission `kiln run --server` would make: the plan, and the workspace file pinned.
fn submission(dir: &Path) -> (Value, Vec<u8>) {
    let data = DATA.to_vec();
    let plan = plan_in(dir);
    let body = json!({
        "plan": serde_json::to_value(&plan).unwrap(),
        "workspace": { "data.csv": Digest::of_bytes(&data).to_string() },
        "pipeline_file": "pipeline.yaml",
        "pipeline_text": PIPELINE,
    });
    (body, data)
}

/// One SSE event: its id, its name, its data.
type Sse = (Option<u64>, String, String);

/// Reads an event stream to its end.
async fn read_events(client: &reqwest::Client, url: &str, after: Option<u64>) -> Vec<Sse> {
    let mut request = client.get(url);
    if let Some(after) = after {
        request = request.header("last-event-id", after.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut id, mut name, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !name.is_empty() {
            events.push((id, name, data));
        }
    }
    events
}

fn kinds(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|(_, name, data)| {
            if name == "record" {
                let v: Value = serde_json::from_str(data).unwrap();
                v["event"].as_str().unwrap_or("?").to_owned()
            } else {
                name.clone()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitted_runs_stream_their_records_and_are_cached_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let db = Db::sqlite(&dir.path().join("server.db")).await.unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(LocalStore::new(state_dir.join("store")));
    let meta = Arc::new(SqlMetadata::new(db.clone()));
    let engine = Engine::new(
        StateDir::new(&state_dir),
        Executors {
            wasm: None,
            container: Some(Arc::new(Writes)),
        },
        EngineConfig {
            jobs: 4,
            ..EngineConfig::default()
        },
    )
    .with_store(store.clone())
    .with_metadata(meta.clone() as Arc<dyn MetadataStore>);
    let server = Server::new(ServerOptions {
        state_dir: state_dir.clone(),
        db,
        store: store.clone(),
        tokens: Tokens::none(),
        max_upload_bytes: 1 << 20,
        max_blob_bytes: 1 << 20,
        on_component: None,
        runs: Some(Runs::new(engine, meta)),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let (body, data) = submission(dir.path());
    let submit = |key: Option<&'static str>| {
        let mut request = client.post(format!("{url}/v1/runs")).json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };

    // The workspace file is not on the server yet: refused, naming it.
    let response = submit(Some("k1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "missing-blobs");
    assert_eq!(
        problem["missing"],
        json!([Digest::of_bytes(&data).to_string()])
    );
    let response = client
        .put(format!("{url}/v1/blobs/{}", Digest::of_bytes(&data)))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Submitted: its record streams in order, from the start and after an id.
    let response = submit(Some("k1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let run_id = response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events_url = format!("{url}/v1/runs/{run_id}/events");
    let events = read_events(&client, &events_url, None).await;
    let names = kinds(&events);
    assert_eq!(
        names.first().map(String::as_str),
        Some("run_started"),
        "{names:?}"
    );
    assert_eq!(
        &names[names.len() - 2..],
        ["run_finished", "end"],
        "{names:?}"
    );
    let records = &events[..events.len() - 1];
    let ids: Vec<u64> = records.iter().map(|(id, _, _)| id.unwrap()).collect();
    assert_eq!(ids, (1..=records.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        serde_json::from_str::<Value>(&events.last().unwrap().2).unwrap()["status"],
        "succeeded"
    );
    let resumed = read_events(&client, &events_url, Some(3)).await;
    assert_eq!(resumed.first().unwrap().0, Some(4));
    assert_eq!(&resumed[..], &events[3..]);
    // Resumed after the last event: only the end, with how the run ended.
    let last = records.len() as u64;
    let resumed = read_events(&client, &events_url, Some(last)).await;
    assert_eq!(kinds(&resumed), ["end"]);
    assert_eq!(
        serde_json::from_str::<Value>(&resumed[0].2).unwrap()["status"],
        "succeeded"
    );

    let state: Value = client
        .get(format!("{url}/v1/runs/{run_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["status"], "succeeded", "{state}");
    let steps = state["steps"].as_object().unwrap();
    assert_eq!(steps.len(), 4, "{state}");
    assert!(
        steps.values().all(|s| s["status"] == "succeeded"),
        "{state}"
    );

    // A retry with the same key is the same run; a new submission is all cached.
    let response = submit(Some("k1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["run_id"],
        run_id.as_str()
    );
    let response = submit(None).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let second = response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, run_id);
    let events = read_events(&client, &format!("{url}/v1/runs/{second}/events"), None).await;
    assert_eq!(kinds(&events).last().map(String::as_str), Some("end"));
    let state: Value = client
        .get(format!("{url}/v1/runs/{second}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let steps = state["steps"].as_object().unwrap();
    assert!(steps.values().all(|s| s["status"] == "cached"), "{state}");
    let listed: Value = client
        .get(format!("{url}/v1/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([run_id, second]));

    // 1,000 readers of one stream at once: each gets every event, in order.
    let expected = read_events(&client, &events_url, None).await;
    let readers: Vec<_> = (0..1000)
        .map(|_| {
            let url = events_url.clone();
            tokio::spawn(async move { read_events(&reqwest::Client::new(), &url, None).await })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }

    let response = client
        .get(format!("{url}/v1/runs/nope/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
