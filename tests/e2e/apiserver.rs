//! Tests of the test API server itself: the answers a real kube-apiserver v1.28 gives (recorded in
//! `shared/apiserver-reference/`), checked with a tiny raw HTTPS client and with a real kube client; its
//! TLS set-up; and the faults it injects on demand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use crate::support::apiserver::{AfterCommit, ClientStream, KubeconfigOptions, TestApiServer, Trust, WatchFault};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
/// Generous: the machine is small and shared.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client, over TLS as the server speaks it
// ---------------------------------------------------------------------------------------------

struct Conn {
    reader: BufReader<ClientStream>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

enum Chunk {
    Data(String),
    /// The terminating chunk: the stream ended cleanly.
    End,
    /// The connection closed without a terminating chunk.
    Eof,
}

impl Conn {
    fn open(server: &TestApiServer) -> Conn {
        let stream = server.connect();
        stream.socket().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Conn { reader: BufReader::new(stream) }
    }

    fn writer(&mut self) -> &mut ClientStream {
        self.reader.get_mut()
    }

    fn send(&mut self, method: &str, target: &str, body: Option<&str>) {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n");
        if let Some(body) = body {
            request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        self.writer().write_all(request.as_bytes()).expect("send request");
    }

    /// Status and headers; None if the server closed the connection.
    fn read_head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Some((status, headers))
    }

    fn call(&mut self, method: &str, target: &str, body: Option<&str>) -> Resp {
        self.send(method, target, body);
        let (status, headers) = self.read_head().expect("a response");
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("Content-Length");
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        Resp { status, headers, body: String::from_utf8(body).unwrap() }
    }

    /// Opens a watch: the response head must be 200 chunked.
    fn watch(&mut self, query: &str) -> Vec<(String, String)> {
        self.send("GET", &format!("{LEASES}?watch=true&{query}"), None);
        let (status, headers) = self.read_head().expect("a response");
        assert_eq!(status, 200);
        let te = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
        assert_eq!(te.map(|(_, v)| v.as_str()), Some("chunked"));
        headers
    }

    fn read_chunk(&mut self) -> Chunk {
        let mut size = String::new();
        match self.reader.read_line(&mut size) {
            Ok(0) | Err(_) => return Chunk::Eof,
            Ok(_) => {}
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut data = vec![0; size + 2];
        if self.reader.read_exact(&mut data).is_err() {
            return Chunk::Eof;
        }
        if size == 0 { Chunk::End } else { Chunk::Data(String::from_utf8(data[..size].to_vec()).unwrap()) }
    }

    fn next_line(&mut self) -> String {
        match self.read_chunk() {
            Chunk::Data(line) => line,
            Chunk::End => panic!("the watch ended"),
            Chunk::Eof => panic!("the watch connection closed"),
        }
    }
}

fn call(server: &TestApiServer, method: &str, target: &str, body: Option<&str>) -> Resp {
    Conn::open(server).call(method, target, body)
}

fn lease_body(name: &str, holder: &str, rv: Option<&str>) -> String {
    let mut metadata = json!({"name": name});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-26T03:00:00.000000Z",
            "renewTime": "2026-11-26T03:00:00.000000Z",
            "leaseTransitions": 0
        }
    })
    .to_string()
}

fn create(server: &TestApiServer, name: &str, holder: &str) -> Value {
    let resp = call(server, "POST", LEASES, Some(&lease_body(name, holder, None)));
    assert_eq!(resp.status, 201, "{}", resp.body);
    resp.json()
}

fn rv_of(object: &Value) -> String {
    object["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    })
}

// ---------------------------------------------------------------------------------------------
// Create, get, replace, delete
// ---------------------------------------------------------------------------------------------

#[test]
fn create_is_201_with_the_stored_object() {
    let server = TestApiServer::start();
    let before = server.resource_version();
    let created = create(&server, "ref-lease", "host-a_1f2e");
    assert_eq!(created["kind"], "Lease");
    assert_eq!(created["apiVersion"], "coordination.k8s.io/v1");
    let meta = &created["metadata"];
    assert_eq!(meta["name"], "ref-lease");
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert_eq!(rv_of(&created), (before + 1).to_string());
    let created_at = meta["creationTimestamp"].as_str().unwrap();
    assert!(created_at.len() == 20 && created_at.ends_with('Z'), "{created_at}");
    assert_eq!(
        created["spec"],
        json!({
            "holderIdentity": "host-a_1f2e",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-26T03:00:00.000000Z",
            "renewTime": "2026-11-26T03:00:00.000000Z",
            "leaseTransitions": 0
        })
    );
    let got = call(&server, "GET", &format!("{LEASES}/ref-lease"), None);
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), created);
}

#[test]
fn create_of_an_existing_name_is_409_already_exists() {
    let server = TestApiServer::start();
    create(&server, "ref-lease", "a");
    let resp = call(&server, "POST", LEASES, Some(&lease_body("ref-lease", "b", None)));
    assert_eq!(resp.status, 409);
    assert_eq!(
        resp.json(),
        status(
            409,
            "AlreadyExists",
            "leases.coordination.k8s.io \"ref-lease\" already exists",
            json!({"name": "ref-lease", "group": "coordination.k8s.io", "kind": "leases"}),
        )
    );
}

#[test]
fn get_of_a_missing_lease_is_404_with_the_real_body_and_headers() {
    let server = TestApiServer::start();
    let resp = call(&server, "GET", &format!("{LEASES}/ref-lease"), None);
    assert_eq!(resp.status, 404);
    // Byte for byte what a real server writes (compact, keys in its order).
    assert_eq!(
        resp.body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"ref-lease\" not found","reason":"NotFound","details":{"name":"ref-lease","group":"coordination.k8s.io","kind":"leases"},"code":404}"#
    );
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.header("Cache-Control"), Some("no-cache, private"));
    assert_eq!(resp.header("Audit-Id").map(str::len), Some(36));
    // In a namespace that does not exist, it is still the lease that is not found.
    let resp = call(&server, "GET", "/apis/coordination.k8s.io/v1/namespaces/nope/leases/x", None);
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["details"]["kind"], "leases");
}

#[test]
fn replace_with_current_resource_version_is_200_and_moves_it_on() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let mut body: Value = created.clone();
    body["spec"]["renewTime"] = json!("2026-11-26T03:00:02.000000Z");
    body["metadata"]["labels"] = json!({"app": "x"});
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&body.to_string()));
    assert_eq!(resp.status, 200, "{}", resp.body);
    let replaced = resp.json();
    assert_eq!(rv_of(&replaced), (rv_of(&created).parse::<u64>().unwrap() + 1).to_string());
    assert_eq!(replaced["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(replaced["metadata"]["creationTimestamp"], created["metadata"]["creationTimestamp"]);
    assert_eq!(replaced["metadata"]["labels"], json!({"app": "x"}));
    assert_eq!(replaced["spec"]["renewTime"], "2026-11-26T03:00:02.000000Z");
}

#[test]
fn replace_that_changes_nothing_keeps_the_resource_version() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&created.to_string()));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), created);
    assert_eq!(server.resource_version().to_string(), rv_of(&created));
}

#[test]
fn replace_with_stale_resource_version_is_409_conflict() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let stale = rv_of(&created);
    let current =
        call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&lease_body("ref-lease", "b", Some(&stale))));
    assert_eq!(current.status, 200);
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&lease_body("ref-lease", "c", Some(&stale))));
    assert_eq!(resp.status, 409);
    assert_eq!(
        resp.json(),
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"ref-lease\": the object has been modified; \
             please apply your changes to the latest version and try again",
            json!({"name": "ref-lease", "group": "coordination.k8s.io", "kind": "leases"}),
        )
    );
}

#[test]
fn replace_without_resource_version_is_422() {
    let server = TestApiServer::start();
    create(&server, "ref-lease", "a");
    let resp =
        call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&lease_body("ref-lease", "no-rv-writer", None)));
    assert_eq!(resp.status, 422);
    assert_eq!(
        resp.json(),
        status(
            422,
            "Invalid",
            "leases.coordination.k8s.io \"ref-lease\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            json!({
                "name": "ref-lease",
                "group": "coordination.k8s.io",
                "kind": "leases",
                "causes": [{
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0x0: must be specified for an update",
                    "field": "metadata.resourceVersion"
                }]
            }),
        )
    );
}

#[test]
fn replace_of_a_deleted_lease_with_its_uid_is_409_precondition_failed() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(call(&server, "DELETE", &format!("{LEASES}/ref-lease"), None).status, 200);
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&created.to_string()));
    assert_eq!(resp.status, 409);
    assert_eq!(
        resp.json(),
        status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"ref-lease\": StorageError: invalid object, \
                 Code: 4, Key: /registry/leases/default/ref-lease, ResourceVersion: 0, AdditionalErrorMsg: \
                 Precondition failed: UID in precondition: {uid}, UID in object meta: "
            ),
            json!({"name": "ref-lease", "group": "coordination.k8s.io", "kind": "leases"}),
        )
    );
}

#[test]
fn replace_of_a_missing_lease_without_uid_creates_it() {
    // Leases allow create-on-update, so a PUT without a uid creates the Lease (201).
    let server = TestApiServer::start();
    let resp = call(&server, "PUT", &format!("{LEASES}/fresh"), Some(&lease_body("fresh", "a", Some("12345"))));
    assert_eq!(resp.status, 201, "{}", resp.body);
    let object = resp.json();
    assert_eq!(rv_of(&object), server.resource_version().to_string());
    assert_eq!(object["spec"]["holderIdentity"], "a");
}

#[test]
fn replace_with_another_name_or_namespace_is_400() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let resp = call(&server, "PUT", &format!("{LEASES}/other"), Some(&created.to_string()));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["message"], "the name of the object (ref-lease) does not match the name on the URL (other)");
    assert_eq!(resp.json()["reason"], "BadRequest");
    let mut body = created.clone();
    body["metadata"]["namespace"] = json!("elsewhere");
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&body.to_string()));
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["message"],
        "the namespace of the provided object does not match the namespace sent on the request"
    );
}

#[test]
fn replace_is_validated_like_create() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let mut body = created.clone();
    body["spec"]["leaseDurationSeconds"] = json!(0);
    let resp = call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&body.to_string()));
    assert_eq!(resp.status, 422);
    assert_eq!(
        resp.json()["message"],
        "Lease.coordination.k8s.io \"ref-lease\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
}

#[test]
fn delete_answers_the_final_object_and_then_get_is_404() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let resp = call(&server, "DELETE", &format!("{LEASES}/ref-lease"), None);
    assert_eq!(resp.status, 200);
    let deleted = resp.json();
    assert_eq!(deleted["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(rv_of(&deleted), server.resource_version().to_string());
    assert_eq!(call(&server, "GET", &format!("{LEASES}/ref-lease"), None).status, 404);
    let again = call(&server, "DELETE", &format!("{LEASES}/ref-lease"), None);
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["message"], "leases.coordination.k8s.io \"ref-lease\" not found");
}

#[test]
fn delete_with_a_failed_precondition_is_409() {
    let server = TestApiServer::start();
    create(&server, "ref-lease", "a");
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-it"}});
    let resp = call(&server, "DELETE", &format!("{LEASES}/ref-lease"), Some(&options.to_string()));
    assert_eq!(resp.status, 409);
    assert_eq!(resp.json()["reason"], "Conflict");
    assert!(server.lease("default", "ref-lease").is_some());
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn create_with_an_invalid_name_is_422_with_causes() {
    let server = TestApiServer::start();
    let body = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"Bad_Name"},"spec":{}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 422);
    let why = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
               start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
               '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    assert_eq!(
        resp.json(),
        status(
            422,
            "Invalid",
            &format!(
                "Lease.coordination.k8s.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {why}"
            ),
            json!({
                "name": "Bad_Name",
                "group": "coordination.k8s.io",
                "kind": "Lease",
                "causes": [{
                    "reason": "FieldValueInvalid",
                    "message": format!("Invalid value: \"Bad_Name\": {why}"),
                    "field": "metadata.name"
                }]
            }),
        )
    );
}

#[test]
fn create_with_a_negative_duration_is_422() {
    let server = TestApiServer::start();
    let body = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"ref-neg"},"spec":{"holderIdentity":"x","leaseDurationSeconds":-5}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 422);
    assert_eq!(
        resp.body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Lease.coordination.k8s.io \"ref-neg\" is invalid: spec.leaseDurationSeconds: Invalid value: -5: must be greater than 0","reason":"Invalid","details":{"name":"ref-neg","group":"coordination.k8s.io","kind":"Lease","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: -5: must be greater than 0","field":"spec.leaseDurationSeconds"}]},"code":422}"#
    );
}

#[test]
fn create_with_negative_transitions_is_422() {
    let server = TestApiServer::start();
    let body = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"ref-odd-21"},"spec":{"leaseTransitions":-1}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 422);
    assert_eq!(
        resp.json()["message"],
        "Lease.coordination.k8s.io \"ref-odd-21\" is invalid: spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
    );
}

#[test]
fn create_with_several_invalid_fields_lists_every_cause() {
    let server = TestApiServer::start();
    let body = r#"{"metadata":{"name":"ok"},"spec":{"leaseDurationSeconds":0,"leaseTransitions":-1}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 422);
    let status = resp.json();
    assert_eq!(
        status["message"],
        "Lease.coordination.k8s.io \"ok\" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be greater \
         than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]"
    );
    assert_eq!(status["details"]["causes"].as_array().unwrap().len(), 2);
}

#[test]
fn create_without_a_name_is_422_required() {
    let server = TestApiServer::start();
    let resp = call(&server, "POST", LEASES, Some(r#"{"metadata":{},"spec":{}}"#));
    assert_eq!(resp.status, 422);
    let status = resp.json();
    assert_eq!(
        status["message"],
        "Lease.coordination.k8s.io \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueRequired");
    // generateName makes a name.
    let resp = call(&server, "POST", LEASES, Some(r#"{"metadata":{"generateName":"gen-"},"spec":{}}"#));
    assert_eq!(resp.status, 201);
    let name = resp.json()["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
}

#[test]
fn create_accepts_what_validation_lets_through_and_drops_unknown_fields() {
    let server = TestApiServer::start();
    let body = r#"{"metadata":{"name":"odd"},"spec":{"holderIdentity":"x","renewTime":"2999-01-01T00:00:00.000000Z","leaseDurationSeconds":2147483647,"bogus":1}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 201);
    assert_eq!(
        resp.json()["spec"],
        json!({"holderIdentity": "x", "renewTime": "2999-01-01T00:00:00.000000Z", "leaseDurationSeconds": 2147483647})
    );
}

#[test]
fn micro_times_are_stored_in_utc_and_bad_ones_are_400() {
    let server = TestApiServer::start();
    let body = r#"{"metadata":{"name":"t"},"spec":{"renewTime":"2026-11-26T04:30:00.123456+01:30"}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 201);
    assert_eq!(resp.json()["spec"]["renewTime"], "2026-11-26T03:00:00.123456Z");
    let body = r#"{"metadata":{"name":"t2"},"spec":{"renewTime":"2026-11-26T04:30:00Z"}}"#;
    let resp = call(&server, "POST", LEASES, Some(body));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["reason"], "BadRequest");
}

#[test]
fn create_in_a_missing_namespace_is_404_namespaces() {
    let server = TestApiServer::start();
    let target = "/apis/coordination.k8s.io/v1/namespaces/no-such-ns/leases";
    let resp = call(&server, "POST", target, Some(&lease_body("ref-lease", "a", None)));
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.json(),
        status(
            404,
            "NotFound",
            "namespaces \"no-such-ns\" not found",
            json!({"name": "no-such-ns", "kind": "namespaces"})
        )
    );
    server.add_namespace("no-such-ns");
    assert_eq!(call(&server, "POST", target, Some(&lease_body("ref-lease", "a", None))).status, 201);
}

#[test]
fn create_with_a_resource_version_is_500() {
    let server = TestApiServer::start();
    let resp = call(&server, "POST", LEASES, Some(&lease_body("x", "a", Some("5"))));
    assert_eq!(resp.status, 500);
    assert_eq!(resp.json()["message"], "resourceVersion should not be set on objects to be created");
}

#[test]
fn bad_bodies_are_400() {
    let server = TestApiServer::start();
    let resp = call(&server, "POST", LEASES, Some("{not json"));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["reason"], "BadRequest");
    let resp = call(&server, "POST", LEASES, Some(r#"{"metadata":{"name":"x"},"spec":{"leaseDurationSeconds":"15"}}"#));
    assert_eq!(resp.status, 400);
    let resp = call(&server, "POST", LEASES, Some(r#"{"metadata":{"name":"x","namespace":"other"},"spec":{}}"#));
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["message"],
        "the namespace of the provided object does not match the namespace sent on the request"
    );
}

// ---------------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------------

#[test]
fn list_honours_the_field_selector() {
    let server = TestApiServer::start();
    create(&server, "a", "x");
    let b = create(&server, "b", "x");
    let resp = call(&server, "GET", &format!("{LEASES}?fieldSelector=metadata.name%3Db"), None);
    assert_eq!(resp.status, 200);
    let list = resp.json();
    assert_eq!(list["kind"], "LeaseList");
    assert_eq!(list["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(list["metadata"]["resourceVersion"], server.resource_version().to_string());
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    // Items carry no kind or apiVersion, as on a real server.
    let mut expected = b.clone();
    expected.as_object_mut().unwrap().remove("kind");
    expected.as_object_mut().unwrap().remove("apiVersion");
    assert_eq!(items[0], expected);
    let resp =
        call(&server, "GET", &format!("{LEASES}?fieldSelector=metadata.name!%3Db,metadata.namespace%3Ddefault"), None);
    let list = resp.json();
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a"]);
    let resp = call(&server, "GET", "/apis/coordination.k8s.io/v1/namespaces/empty/leases", None);
    assert_eq!(resp.json()["items"], json!([]));
}

/// Pages as kube-apiserver (etcd3) gives them: later pages are read at the first page's resourceVersion, a
/// consistent snapshot whatever is written meanwhile; `remainingItemCount` only without selectors; a token
/// whose version was compacted is 410 Expired, one that cannot be read 400.
#[test]
fn a_paged_list_reads_one_snapshot_and_its_token_expires_with_compaction() {
    let server = TestApiServer::start();
    for name in ["a", "b", "c"] {
        create(&server, name, "x");
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    let first = call(&server, "GET", &format!("{LEASES}?limit=1"), None).json();
    let rv = first["metadata"]["resourceVersion"].clone();
    assert_eq!(names(&first), ["a"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 2);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    // Written meanwhile: not seen by the list's later pages.
    assert_eq!(call(&server, "DELETE", &format!("{LEASES}/b"), None).status, 200);
    create(&server, "bb", "x");
    let second = call(&server, "GET", &format!("{LEASES}?limit=1&continue={token}"), None).json();
    assert_eq!(names(&second), ["b"], "{second}");
    assert_eq!(second["metadata"]["resourceVersion"], rv, "a continued page is read at the list's version");
    let token2 = second["metadata"]["continue"].as_str().unwrap().to_string();
    let last = call(&server, "GET", &format!("{LEASES}?limit=1&continue={token2}"), None).json();
    assert_eq!(names(&last), ["c"]);
    assert_eq!(last["metadata"].get("continue"), None);
    // A new list sees the writes.
    assert_eq!(names(&call(&server, "GET", LEASES, None).json()), ["a", "bb", "c"]);
    // With a selector, no remainingItemCount.
    let selected = call(&server, "GET", &format!("{LEASES}?limit=1&fieldSelector=metadata.name!%3Dc"), None).json();
    assert!(selected["metadata"]["continue"].is_string(), "{selected}");
    assert_eq!(selected["metadata"].get("remainingItemCount"), None, "{selected}");
    // Compacted past the list's version: 410 Expired, as kube-apiserver words it.
    server.compact();
    let expired = call(&server, "GET", &format!("{LEASES}?limit=1&continue={token2}"), None);
    assert_eq!(expired.status, 410, "{}", expired.body);
    assert_eq!(expired.json()["reason"], "Expired");
    let bad = call(&server, "GET", &format!("{LEASES}?limit=1&continue=not-a-token!"), None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["message"].as_str().unwrap().starts_with("continue key is not valid"), "{}", bad.body);
}

#[test]
fn list_with_an_unsupported_field_selector_is_400() {
    let server = TestApiServer::start();
    let resp = call(&server, "GET", &format!("{LEASES}?fieldSelector=spec.holderIdentity%3Dx"), None);
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"\"spec.holderIdentity\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"","reason":"BadRequest","code":400}"#
    );
    // The same before a watch streams anything.
    let resp = call(&server, "GET", &format!("{LEASES}?watch=true&fieldSelector=spec.holderIdentity%3Dx"), None);
    assert_eq!(resp.status, 400);
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

#[test]
fn watch_without_resource_version_starts_with_added() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    create(&server, "other", "a");
    let mut conn = Conn::open(&server);
    let headers = conn.watch("fieldSelector=metadata.name%3Dref-lease&timeoutSeconds=30");
    assert!(headers.iter().any(|(n, v)| n == "Content-Type" && v == "application/json"));
    assert!(headers.iter().any(|(n, _)| n == "Audit-Id"));
    assert!(!headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")));
    let line = conn.next_line();
    assert!(line.ends_with('\n'));
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event, json!({"type": "ADDED", "object": created}));
    wait_until("the watch is counted", || server.watch_count() == 1);
}

#[test]
fn watch_from_resource_version_gets_modified_deleted_and_bookmarks() {
    let server = TestApiServer::start();
    server.set_bookmark_interval(Duration::from_millis(100));
    let created = create(&server, "ref-lease", "a");
    let from = rv_of(&created);
    let mut conn = Conn::open(&server);
    conn.watch(&format!(
        "fieldSelector=metadata.name%3Dref-lease&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=60"
    ));
    let modified =
        call(&server, "PUT", &format!("{LEASES}/ref-lease"), Some(&lease_body("ref-lease", "", Some(&from))));
    assert_eq!(modified.status, 200);
    create(&server, "unrelated", "a"); // filtered out, but moves the resourceVersion on
    let mut seen = Vec::new();
    let mut bookmarks = 0;
    let mut deleted = false;
    while !deleted || bookmarks == 0 {
        let line = conn.next_line();
        let event: Value = serde_json::from_str(&line).unwrap();
        match event["type"].as_str().unwrap() {
            "BOOKMARK" => {
                let rv = rv_of(&event["object"]);
                assert_eq!(
                    line,
                    format!(
                        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"Lease\",\"apiVersion\":\"coordination.k8s.io/v1\",\"metadata\":{{\"resourceVersion\":\"{rv}\",\"creationTimestamp\":null}},\"spec\":{{}}}}}}\n"
                    )
                );
                bookmarks += 1;
                if seen.len() == 1 && !deleted {
                    let resp = call(&server, "DELETE", &format!("{LEASES}/ref-lease"), None);
                    assert_eq!(resp.status, 200);
                }
            }
            kind => {
                assert_eq!(event["object"]["metadata"]["name"], "ref-lease");
                assert_eq!(event["object"]["kind"], "Lease");
                seen.push(kind.to_string());
                if kind == "MODIFIED" {
                    assert_eq!(event["object"], modified.json());
                }
                deleted = kind == "DELETED";
            }
        }
    }
    assert_eq!(seen, ["MODIFIED", "DELETED"]);
}

#[test]
fn watch_from_a_compacted_resource_version_gets_the_410_error_line() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    create(&server, "ref-lease-2", "a");
    server.compact();
    let current = server.resource_version();
    let mut conn = Conn::open(&server);
    conn.watch(&format!("resourceVersion={}&timeoutSeconds=30", rv_of(&created)));
    let line = conn.next_line();
    assert_eq!(
        line,
        format!(
            "{{\"type\":\"ERROR\",\"object\":{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"too old resource version: {} ({current})\",\"reason\":\"Expired\",\"code\":410}}}}\n",
            rv_of(&created)
        )
    );
    assert!(matches!(conn.read_chunk(), Chunk::End));
    // From the current resourceVersion is fine.
    let mut conn = Conn::open(&server);
    conn.watch(&format!("resourceVersion={current}&timeoutSeconds=30"));
    call(&server, "DELETE", &format!("{LEASES}/ref-lease"), None);
    let event: Value = serde_json::from_str(&conn.next_line()).unwrap();
    assert_eq!(event["type"], "DELETED");
}

#[test]
fn watch_ends_cleanly_after_timeout_seconds_and_the_connection_is_reused() {
    let server = TestApiServer::start();
    let mut conn = Conn::open(&server);
    let started = Instant::now();
    conn.watch("timeoutSeconds=1");
    assert!(matches!(conn.read_chunk(), Chunk::End));
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_until("the watch is closed", || server.watch_count() == 0);
    // Keep-alive: the same connection serves the next request.
    let resp = conn.call("GET", &format!("{LEASES}/x"), None);
    assert_eq!(resp.status, 404);
}

#[test]
fn drop_watches_closes_open_watches_abruptly() {
    let server = TestApiServer::start();
    let mut first = Conn::open(&server);
    first.watch("timeoutSeconds=60");
    let mut second = Conn::open(&server);
    second.watch("timeoutSeconds=60&allowWatchBookmarks=true");
    wait_until("both watches are open", || server.watch_count() == 2);
    server.drop_watches();
    assert!(matches!(first.read_chunk(), Chunk::Eof));
    loop {
        match second.read_chunk() {
            Chunk::Data(line) => assert!(line.contains("BOOKMARK"), "{line}"),
            Chunk::End => panic!("ended cleanly"),
            Chunk::Eof => break,
        }
    }
    wait_until("no watch is open", || server.watch_count() == 0);
    // New watches work.
    let mut third = Conn::open(&server);
    third.watch("timeoutSeconds=60");
    wait_until("the new watch is open", || server.watch_count() == 1);
}

#[test]
fn watch_count_drops_when_the_client_goes_away() {
    let server = TestApiServer::start();
    let mut conn = Conn::open(&server);
    conn.watch("timeoutSeconds=600");
    wait_until("the watch is open", || server.watch_count() == 1);
    drop(conn);
    wait_until("the watch is closed", || server.watch_count() == 0);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[test]
fn forbidden_verbs_are_403_with_the_real_message() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    server.forbid("get");
    server.forbid("list");
    let resp = call(&server, "GET", &format!("{LEASES}/x"), None);
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.json(),
        status(
            403,
            "Forbidden",
            "leases.coordination.k8s.io \"x\" is forbidden: User \"system:serviceaccount:default:mpsync\" cannot get \
             resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"default\"",
            json!({"name": "x", "group": "coordination.k8s.io", "kind": "leases"}),
        )
    );
    let resp = call(&server, "GET", LEASES, None);
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.json(),
        status(
            403,
            "Forbidden",
            "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:default:mpsync\" cannot list \
             resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"default\"",
            json!({"group": "coordination.k8s.io", "kind": "leases"}),
        )
    );
    // Other verbs still work; allow undoes forbid.
    assert_eq!(call(&server, "POST", LEASES, Some(&lease_body("y", "a", None))).status, 201);
    server.allow("get");
    assert_eq!(call(&server, "GET", &format!("{LEASES}/x"), None).status, 200);
    server.forbid("watch");
    let resp = call(&server, "GET", &format!("{LEASES}?watch=1"), None);
    assert_eq!(resp.status, 403);
    assert!(resp.json()["message"].as_str().unwrap().contains("cannot watch resource"));
}

#[test]
fn unauthorized_is_401_for_every_request() {
    let server = TestApiServer::start();
    server.unauthorized(true);
    for target in [format!("{LEASES}/ref-lease"), "/version".to_string()] {
        let resp = call(&server, "GET", &target, None);
        assert_eq!(resp.status, 401);
        assert_eq!(
            resp.body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
        );
    }
    server.unauthorized(false);
    assert_eq!(call(&server, "GET", "/version", None).status, 200);
}

#[test]
fn fail_next_answers_the_status_then_recovers() {
    let server = TestApiServer::start();
    server.fail_next(2, 500);
    let mut conn = Conn::open(&server);
    for _ in 0..2 {
        let resp = conn.call("GET", &format!("{LEASES}/x"), None);
        assert_eq!(resp.status, 500);
        assert_eq!(resp.json()["reason"], "InternalError");
        assert_eq!(resp.json()["code"], 500);
    }
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 404);

    server.fail_next(1, 429);
    let resp = conn.call("POST", LEASES, Some(&lease_body("x", "a", None)));
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("Retry-After"), Some("1"));
    assert_eq!(resp.json()["reason"], "TooManyRequests");
    assert_eq!(resp.json()["details"]["retryAfterSeconds"], 1);
    assert!(server.lease("default", "x").is_none(), "a failed request changes nothing");

    server.fail_next(1, 503);
    let resp = conn.call("GET", &format!("{LEASES}?watch=true"), None);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["reason"], "ServiceUnavailable");
    assert_eq!(conn.call("POST", LEASES, Some(&lease_body("x", "a", None))).status, 201);
}

#[test]
fn latency_delays_answers() {
    let server = TestApiServer::start();
    server.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(call(&server, "GET", "/version", None).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_latency(Duration::ZERO);
}

/// A write held before it commits (etcd's share on a real cluster): two replaces of one version sent
/// together both wait, then one commits and the other finds the version moved; a read is not held, and
/// the watch shows the one that committed.
#[test]
fn commit_delay_holds_writes_and_checks_the_version_after_the_wait() {
    let server = TestApiServer::start();
    let rv = rv_of(&create(&server, "held", "a"));
    server.set_commit_delay(Duration::from_secs(3));
    let mut watching = Conn::open(&server);
    watching.watch(&format!("resourceVersion={rv}&timeoutSeconds=60"));
    wait_until("the watch is open", || server.watch_count() == 1);
    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let writes: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|holder| {
                let (server, body) = (&server, lease_body("held", holder, Some(&rv)));
                scope.spawn(move || call(server, "PUT", &format!("{LEASES}/held"), Some(&body)).status)
            })
            .collect();
        // Logged as they come in, answered or not.
        wait_until("both writes are in", || server.requests().iter().filter(|r| r.verb == "update").count() == 2);
        let read = call(&server, "GET", &format!("{LEASES}/held"), None);
        assert!(started.elapsed() < Duration::from_secs(3), "a read is not held");
        assert_eq!(rv_of(&read.json()), rv, "nothing committed yet");
        writes.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(started.elapsed() >= Duration::from_secs(3), "writes are held");
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 409], "one commits, the other finds the version moved: {statuses:?}");
    let event: Value = serde_json::from_str(&watching.next_line()).unwrap();
    assert_eq!(event["type"], "MODIFIED");
    assert!(["b", "c"].contains(&event["object"]["spec"]["holderIdentity"].as_str().unwrap()));
    // A replace already stale when it comes in, and a forbidden write, are answered without the wait.
    let started = Instant::now();
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/held"), Some(&lease_body("held", "d", Some(&rv)))).status, 409);
    server.forbid("create");
    assert_eq!(call(&server, "POST", LEASES, Some(&lease_body("other", "d", None))).status, 403);
    assert!(started.elapsed() < Duration::from_secs(3), "answered before storage: {:?}", started.elapsed());
    server.set_commit_delay(Duration::ZERO);
}

#[test]
fn restart_keeps_objects_closes_connections_and_moves_the_resource_version_on() {
    let server = TestApiServer::start();
    let created = create(&server, "ref-lease", "a");
    let mut idle = Conn::open(&server);
    assert_eq!(idle.call("GET", &format!("{LEASES}/ref-lease"), None).status, 200);
    let mut watching = Conn::open(&server);
    watching.watch(&format!("resourceVersion={}&timeoutSeconds=60", rv_of(&created)));
    wait_until("the watch is open", || server.watch_count() == 1);
    let before = server.resource_version();

    server.restart();

    assert!(matches!(watching.read_chunk(), Chunk::Eof));
    idle.send("GET", &format!("{LEASES}/ref-lease"), None);
    assert!(idle.read_head().is_none(), "the old connection is closed");
    assert!(server.resource_version() >= before + 1000);
    let resp = call(&server, "GET", &format!("{LEASES}/ref-lease"), None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), created);
    // The history is gone: a watch from before the restart gets 410.
    let mut conn = Conn::open(&server);
    conn.watch(&format!("resourceVersion={}&timeoutSeconds=30", rv_of(&created)));
    let event: Value = serde_json::from_str(&conn.next_line()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    // Writes go on from the new counter.
    let resp = call(
        &server,
        "PUT",
        &format!("{LEASES}/ref-lease"),
        Some(&lease_body("ref-lease", "b", Some(&rv_of(&created)))),
    );
    assert_eq!(resp.status, 200);
    assert!(rv_of(&resp.json()).parse::<u64>().unwrap() > before + 1000);
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[test]
fn one_connection_serves_several_requests_and_all_are_logged() {
    let server = TestApiServer::start();
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call("POST", LEASES, Some(&lease_body("x", "a", None))).status, 201);
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 200);
    assert_eq!(conn.call("GET", &format!("{LEASES}?fieldSelector=metadata.name%3Dx"), None).status, 200);
    let log = server.requests();
    assert_eq!(log.len(), 3);
    assert_eq!((log[0].method.as_str(), log[0].path.as_str()), ("POST", LEASES));
    assert_eq!(log[1].path, format!("{LEASES}/x"));
    assert_eq!(log[2].query, "fieldSelector=metadata.name%3Dx");
}

#[test]
fn version_and_unknown_paths() {
    let server = TestApiServer::start();
    let resp = call(&server, "GET", "/version", None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["gitVersion"], "v1.28.7");
    let resp = call(&server, "GET", "/api/v1/namespaces/default/pods", None);
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json(), status(404, "NotFound", "the server could not find the requested resource", json!({})));
    let resp = call(&server, "PATCH", &format!("{LEASES}/x"), Some("{}"));
    assert_eq!(resp.status, 405);
}

#[test]
fn bad_input_is_400_and_the_server_keeps_serving() {
    let server = TestApiServer::start();
    // A malformed request line.
    let mut conn = Conn::open(&server);
    conn.writer().write_all(b"NONSENSE\r\n\r\n").unwrap();
    let (status, _) = conn.read_head().expect("an answer");
    assert_eq!(status, 400);
    // A client that goes away in the middle of a request.
    let mut conn = Conn::open(&server);
    conn.writer()
        .write_all(
            format!("POST {LEASES} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{")
                .as_bytes(),
        )
        .unwrap();
    drop(conn);
    // Garbage bytes.
    let mut conn = Conn::open(&server);
    conn.writer().write_all(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).unwrap();
    let _ = conn.read_head();
    assert_eq!(call(&server, "GET", "/version", None).status, 200);
}

#[test]
fn kubeconfig_names_the_server_and_namespace() {
    let server = TestApiServer::start();
    let yaml = server.kubeconfig_yaml("team-a");
    let config = Kubeconfig::from_yaml(&yaml).unwrap();
    assert_eq!(config.current_context.as_deref(), Some("test"));
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(server.url().as_str()));
    let context = config.contexts[0].context.as_ref().unwrap();
    assert_eq!(context.namespace.as_deref(), Some("team-a"));
}

// ---------------------------------------------------------------------------------------------
// Through a real kube client
// ---------------------------------------------------------------------------------------------

async fn kube_api(server: &TestApiServer) -> Api<Lease> {
    let api = kube_api_with(server, &KubeconfigOptions::new("default")).await.unwrap();
    assert_eq!(api.namespace(), Some("default"));
    api
}

/// A kube client built from the kubeconfig `options` describe.
async fn kube_api_with(server: &TestApiServer, options: &KubeconfigOptions) -> Result<Api<Lease>, String> {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml_with(options)).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    Ok(Api::namespaced(client, "default"))
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    }
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn kube_client_create_get_replace_delete() {
    let server = TestApiServer::start();
    let api = kube_api(&server).await;
    let pp = PostParams::default();

    let missing = api_error(api.get("mine").await);
    assert_eq!(missing.code, 404);
    assert_eq!(missing.reason, "NotFound");

    let created = api.create(&pp, &lease("mine", "me")).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    let again = api_error(api.create(&pp, &lease("mine", "me")).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    let mut next = created.clone();
    next.spec.as_mut().unwrap().holder_identity = Some("you".into());
    let replaced = api.replace("mine", &pp, &next).await.unwrap();
    assert_ne!(replaced.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let stale = api_error(api.replace("mine", &pp, &next).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    let listed = api.list(&ListParams::default().fields("metadata.name=mine")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec.as_ref().unwrap().holder_identity.as_deref(), Some("you"));

    let deleted = api.delete("mine", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    assert_eq!(api_error(api.get("mine").await).code, 404);

    server.fail_next(1, 500);
    assert_eq!(api_error(api.get("mine").await).code, 500);
    assert_eq!(api_error(api.get("mine").await).code, 404);

    server.forbid("create");
    let forbidden = api_error(api.create(&pp, &lease("mine", "me")).await);
    assert_eq!((forbidden.code, forbidden.reason.as_str()), (403, "Forbidden"));
}

#[tokio::test(flavor = "current_thread")]
async fn kube_client_watch_stream_works_end_to_end() {
    let server = TestApiServer::start();
    server.set_bookmark_interval(Duration::from_secs(3600));
    let api = kube_api(&server).await;
    let pp = PostParams::default();
    let created = api.create(&pp, &lease("w", "me")).await.unwrap();

    let params = WatchParams::default().fields("metadata.name=w").timeout(60);
    let mut stream = api.watch(&params, "0").await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Added(lease))) => assert_eq!(lease.metadata.uid, created.metadata.uid),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let mut next = created.clone();
    next.spec.as_mut().unwrap().holder_identity = Some("you".into());
    api.replace("w", &pp, &next).await.unwrap();
    match stream.next().await {
        Some(Ok(WatchEvent::Modified(lease))) => {
            assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("you"));
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    api.delete("w", &DeleteParams::default()).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(WatchEvent::Deleted(_)))));

    // A watch from a compacted resourceVersion: the 410 comes through as an error event.
    server.compact();
    let old = created.metadata.resource_version.unwrap();
    let mut stream = api.watch(&params, &old).await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after the ERROR");

    // Bookmarks reach the client too.
    server.set_bookmark_interval(Duration::from_millis(100));
    let current = server.resource_version().to_string();
    let mut stream = api.watch(&params, &current).await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Bookmark(bookmark))) => {
            assert_eq!(bookmark.metadata.resource_version, current)
        }
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
}

#[test]
fn expect_100_continue_and_chunked_request_bodies_are_understood() {
    let server = TestApiServer::start();
    let mut conn = Conn::open(&server);
    let body = lease_body("x", "a", None);
    conn.writer()
        .write_all(
            format!(
                "POST {LEASES} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, _) = conn.read_head().expect("100 Continue");
    assert_eq!(status, 100);
    conn.writer().write_all(body.as_bytes()).unwrap();
    let (status, headers) = conn.read_head().expect("the answer");
    assert_eq!(status, 201);
    let length: usize = headers.iter().find(|(n, _)| n == "Content-Length").unwrap().1.parse().unwrap();
    let mut created = vec![0; length];
    conn.reader.read_exact(&mut created).unwrap();

    let body = lease_body("y", "a", None);
    let (first, second) = body.split_at(10);
    conn.writer()
        .write_all(
            format!(
                "POST {LEASES} HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                first.len(),
                second.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, _) = conn.read_head().expect("the answer");
    assert_eq!(status, 201);
    assert!(server.lease("default", "y").is_some());
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn kubeconfig_carries_the_ca_as_data_or_file_or_skips_verification() {
    use base64::Engine as _;
    let server = TestApiServer::start();
    assert!(server.url().starts_with("https://127.0.0.1:"), "{}", server.url());
    let ca = server.ca_pem();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    let config = Kubeconfig::from_yaml(&server.kubeconfig_yaml("default")).unwrap();
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    let data = cluster.certificate_authority_data.as_deref().expect("certificate-authority-data");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(data).unwrap(), ca.as_bytes());
    assert_eq!(cluster.insecure_skip_tls_verify, None);

    let options = KubeconfigOptions::new("team-a")
        .localhost()
        .trust(Trust::CaFile("/some/ca.crt".into()))
        .proxy_url("http://127.0.0.1:3128");
    let config = Kubeconfig::from_yaml(&server.kubeconfig_yaml_with(&options)).unwrap();
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(format!("https://localhost:{}", server.addr().port()).as_str()));
    assert_eq!(cluster.certificate_authority.as_deref(), Some("/some/ca.crt"));
    assert_eq!(cluster.certificate_authority_data, None);
    assert_eq!(cluster.proxy_url.as_deref(), Some("http://127.0.0.1:3128"));
    assert_eq!(config.contexts[0].context.as_ref().unwrap().namespace.as_deref(), Some("team-a"));

    let options = KubeconfigOptions::new("default").trust(Trust::InsecureSkipTlsVerify);
    let config = Kubeconfig::from_yaml(&server.kubeconfig_yaml_with(&options)).unwrap();
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
    assert_eq!((cluster.certificate_authority.as_deref(), cluster.certificate_authority_data.as_deref()), (None, None));

    let options = KubeconfigOptions::new("default").trust(Trust::SystemRoots);
    let config = Kubeconfig::from_yaml(&server.kubeconfig_yaml_with(&options)).unwrap();
    let cluster = config.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.insecure_skip_tls_verify, None);
    assert_eq!((cluster.certificate_authority.as_deref(), cluster.certificate_authority_data.as_deref()), (None, None));
}

/// A TLS handshake with the server, verifying its certificate against `name` with the server's CA.
fn handshake(server: &TestApiServer, name: rustls::pki_types::ServerName<'static>) -> Result<(), std::io::Error> {
    let socket = TcpStream::connect(server.addr()).unwrap();
    socket.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let conn = rustls::ClientConnection::new(server.client_tls_config(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, socket);
    stream.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200 OK\r\n") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("no answer: {answer:?}")))
    }
}

#[test]
fn certificate_covers_localhost_and_the_loopback_addresses_only() {
    use rustls::pki_types::ServerName;
    let server = TestApiServer::start();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).unwrap().to_owned();
        handshake(&server, name.clone()).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    for name in ["kubernetes.default.svc", "127.0.0.2"] {
        let name = ServerName::try_from(name).unwrap().to_owned();
        assert!(handshake(&server, name.clone()).is_err(), "{name:?} must not verify");
    }
    // Another server's CA does not verify this one.
    let other = TestApiServer::start();
    let socket = TcpStream::connect(server.addr()).unwrap();
    socket.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(other.client_tls_config(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, socket);
    let err = stream.write_all(b"GET /version HTTP/1.1\r\n\r\n").and_then(|()| stream.flush()).unwrap_err();
    // Both CAs have the same name, as every kubeadm cluster's "kubernetes" CA has: the signature fails.
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");
}

#[test]
fn plain_http_to_the_https_port_gets_gos_answer() {
    let server = TestApiServer::start();
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert_eq!(answer, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
    // It keeps serving TLS.
    assert_eq!(call(&server, "GET", "/version", None).status, 200);
}

#[test]
fn start_plain_serves_plain_http_for_debugging() {
    let server = TestApiServer::start_plain();
    assert!(server.url().starts_with("http://127.0.0.1:"), "{}", server.url());
    assert!(!server.is_tls());
    let yaml = server.kubeconfig_yaml("default");
    assert!(!yaml.contains("certificate-authority"), "{yaml}");
    let (status, body) = server.call("POST", LEASES, Some(&lease_body("x", "a", None)));
    assert_eq!(status, 201, "{body}");
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(format!("GET {LEASES}/x HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test(flavor = "current_thread")]
async fn kube_client_trusts_the_server_by_ca_data_ca_file_localhost_or_insecure_and_not_otherwise() {
    let server = TestApiServer::start();
    let dir = crate::support::temp_dir("apiserver-tls");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, server.ca_pem()).unwrap();
    let trusted = [
        KubeconfigOptions::new("default"),
        KubeconfigOptions::new("default").localhost(),
        KubeconfigOptions::new("default").trust(Trust::CaFile(ca_file.clone())),
        KubeconfigOptions::new("default").localhost().trust(Trust::CaFile(ca_file)),
        KubeconfigOptions::new("default").trust(Trust::InsecureSkipTlsVerify),
    ];
    for options in trusted {
        let api = kube_api_with(&server, &options).await.unwrap_or_else(|e| panic!("{options:?}: {e}"));
        let missing = api_error(api.get("missing").await);
        assert_eq!(missing.code, 404, "{options:?}");
    }
    // Without the CA the handshake fails (or no client can even be built without any root).
    let options = KubeconfigOptions::new("default").trust(Trust::SystemRoots);
    if let Ok(api) = kube_api_with(&server, &options).await {
        match api.get("missing").await {
            Err(kube::Error::Api(status)) => panic!("an answer without trusting the server: {status:?}"),
            Err(_) => {}
            Ok(lease) => panic!("an answer without trusting the server: {lease:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Faults after a commit
// ---------------------------------------------------------------------------------------------

fn replace_body(server: &TestApiServer, name: &str, holder: &str) -> String {
    let rv = rv_of(&server.lease("default", name).expect("the lease exists"));
    lease_body(name, holder, Some(&rv))
}

fn holder_of(server: &TestApiServer, name: &str) -> String {
    server.lease("default", name).expect("the lease exists")["spec"]["holderIdentity"].as_str().unwrap().to_string()
}

#[test]
fn after_commit_fail_stores_the_write_then_answers_500_or_504() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    let mut conn = Conn::open(&server);

    server.after_commit(2, AfterCommit::Fail(500));
    // A write that fails anyway is answered as usual and takes no shot.
    let stale = lease_body("x", "b", Some("1"));
    assert_eq!(conn.call("PUT", &format!("{LEASES}/x"), Some(&stale)).status, 409);
    let before = server.resource_version();
    let resp = conn.call("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "b")));
    assert_eq!(resp.status, 500);
    assert_eq!(
        resp.json(),
        status(
            500,
            "InternalError",
            "Internal error occurred: injected failure",
            json!({"causes": [{"message": "injected failure"}]})
        )
    );
    assert_eq!(holder_of(&server, "x"), "b", "the write was committed");
    assert_eq!(server.resource_version(), before + 1);
    // A create is a write too: the second shot.
    let resp = conn.call("POST", LEASES, Some(&lease_body("y", "a", None)));
    assert_eq!(resp.status, 500);
    assert!(server.lease("default", "y").is_some(), "the create was committed");
    // Then writes are answered as usual.
    let resp = conn.call("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "c")));
    assert_eq!(resp.status, 200);

    server.after_commit(1, AfterCommit::Fail(504));
    let resp = conn.call("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "d")));
    assert_eq!(resp.status, 504);
    assert_eq!(
        resp.json(),
        status(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            json!({})
        )
    );
    assert_eq!(holder_of(&server, "x"), "d");
    // Reads are never touched.
    server.after_commit(1, AfterCommit::Fail(500));
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 200);
    server.after_commit(0, AfterCommit::Fail(500));
    assert_eq!(conn.call("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "e"))).status, 200);
}

#[test]
fn after_commit_drop_stores_the_write_and_closes_without_an_answer() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    server.after_commit(1, AfterCommit::Drop);
    let mut conn = Conn::open(&server);
    conn.send("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "b")));
    assert!(conn.read_head().is_none(), "no answer");
    assert_eq!(holder_of(&server, "x"), "b");
    let log = server.requests();
    assert_eq!((log[1].verb, log[1].status), ("update", 0));
    assert_eq!(server.counts().get(&("update".to_string(), 0)), Some(&1));
    // Only one shot.
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "c"))).status, 200);
}

#[test]
fn after_commit_of_a_holder_spares_other_writers() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    server.after_commit_of("b", 1, AfterCommit::Fail(500));
    // a writes (a before, a after): spared.
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "a2"))).status, 200);
    assert_eq!(server.after_commit_pending(), 1);
    // A write that makes b the holder is b's (b after).
    assert_eq!(call(&server, "PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "b"))).status, 500);
    assert_eq!(server.after_commit_pending(), 0, "fired");
    assert_eq!(holder_of(&server, "x"), "b");
    // And a release by b (b before, "" after) counts too.
    server.after_commit_of("b", 1, AfterCommit::Drop);
    let mut conn = Conn::open(&server);
    conn.send("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "")));
    assert!(conn.read_head().is_none(), "no answer");
    assert_eq!(holder_of(&server, "x"), "");
}

#[test]
fn after_commit_delay_shows_the_write_to_watches_and_reads_before_its_answer() {
    let server = TestApiServer::start();
    let created = create(&server, "x", "a");
    let mut watch = Conn::open(&server);
    watch.watch(&format!("resourceVersion={}&timeoutSeconds=120", rv_of(&created)));

    // A long delay: the write is seen everywhere while its answer is still held.
    server.after_commit(1, AfterCommit::Delay(Duration::from_secs(600)));
    let mut writer = Conn::open(&server);
    writer.send("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "b")));
    let event: Value = serde_json::from_str(&watch.next_line()).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["object"]["spec"]["holderIdentity"].as_str()),
        (Some("MODIFIED"), Some("b"))
    );
    let resp = call(&server, "GET", &format!("{LEASES}/x"), None);
    assert_eq!(resp.json()["spec"]["holderIdentity"], "b");
    let put = server.requests().into_iter().find(|r| r.method == "PUT").unwrap();
    assert_eq!(put.status, 0, "the answer is still held");
    // A restart ends the wait: the answer never comes.
    server.restart();
    assert!(writer.read_head().is_none());

    // A short delay: the answer comes, late.
    let delay = Duration::from_millis(500);
    server.after_commit(1, AfterCommit::Delay(delay));
    let started = Instant::now();
    let resp = call(&server, "PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "c")));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["spec"]["holderIdentity"], "c");
    assert!(started.elapsed() >= delay, "answered after {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Watch faults
// ---------------------------------------------------------------------------------------------

#[test]
fn watch_fault_error_sends_one_error_event_then_ends_cleanly() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    // An open watch gets the fault when it is switched on.
    let mut open = Conn::open(&server);
    open.watch("timeoutSeconds=120");
    let added: Value = serde_json::from_str(&open.next_line()).unwrap();
    assert_eq!(added["type"], "ADDED");
    server.set_watch_fault(Some(WatchFault::Error(500)));
    let internal = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\
                    \"status\":\"Failure\",\"message\":\"Internal error occurred: injected failure\",\
                    \"reason\":\"InternalError\",\"details\":{\"causes\":[{\"message\":\"injected failure\"}]},\
                    \"code\":500}}\n";
    assert_eq!(open.next_line(), internal);
    assert!(matches!(open.read_chunk(), Chunk::End));
    // So does every new one, keep-alive intact.
    for _ in 0..2 {
        open.watch("timeoutSeconds=120");
        assert_eq!(open.next_line(), internal);
        assert!(matches!(open.read_chunk(), Chunk::End));
    }

    // The Expired form, as after a compaction.
    server.set_watch_fault(Some(WatchFault::Error(410)));
    let current = server.resource_version();
    open.watch(&format!("resourceVersion={current}&timeoutSeconds=120"));
    assert_eq!(
        open.next_line(),
        format!(
            "{{\"type\":\"ERROR\",\"object\":{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"too old resource version: {current} ({})\",\"reason\":\"Expired\",\"code\":410}}}}\n",
            current + 1
        )
    );
    assert!(matches!(open.read_chunk(), Chunk::End));

    // A bookmark at the current version first, then the error.
    server.set_watch_fault(Some(WatchFault::BookmarkThenError(500)));
    open.watch("timeoutSeconds=120&allowWatchBookmarks=true");
    let bookmark: Value = serde_json::from_str(&open.next_line()).unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], current.to_string());
    assert_eq!(open.next_line(), internal);
    assert!(matches!(open.read_chunk(), Chunk::End));

    server.set_watch_fault(None);
    open.watch("timeoutSeconds=120");
    let added: Value = serde_json::from_str(&open.next_line()).unwrap();
    assert_eq!(added["type"], "ADDED");
    let counts = server.counts();
    assert_eq!(counts.get(&("watch".to_string(), 200)), Some(&6));
}

#[test]
fn watch_fault_end_at_once_ends_every_watch_with_no_event() {
    let server = TestApiServer::start();
    create(&server, "x", "a");
    let mut open = Conn::open(&server);
    open.watch("timeoutSeconds=120&allowWatchBookmarks=true");
    assert_eq!(serde_json::from_str::<Value>(&open.next_line()).unwrap()["type"], "ADDED");
    assert!(server.wait_for_watch_count(1, crate::support::PATIENCE));
    server.set_watch_fault(Some(WatchFault::EndAtOnce));
    loop {
        match open.read_chunk() {
            Chunk::Data(line) => assert!(line.contains("BOOKMARK"), "{line}"),
            Chunk::End => break,
            Chunk::Eof => panic!("closed abruptly"),
        }
    }
    for _ in 0..3 {
        open.watch("timeoutSeconds=120");
        assert!(matches!(open.read_chunk(), Chunk::End), "zero events, then the end");
    }
    assert!(server.wait_for_watch_count(0, crate::support::PATIENCE));
    server.set_watch_fault(None);
    open.watch("timeoutSeconds=120");
    assert_eq!(serde_json::from_str::<Value>(&open.next_line()).unwrap()["type"], "ADDED");
}

#[tokio::test(flavor = "current_thread")]
async fn kube_client_sees_watch_faults_as_error_events_and_ended_streams() {
    let server = TestApiServer::start();
    let api = kube_api(&server).await;
    api.create(&PostParams::default(), &lease("w", "me")).await.unwrap();
    let params = WatchParams::default().fields("metadata.name=w").timeout(60);

    server.set_watch_fault(Some(WatchFault::Error(500)));
    let mut stream = api.watch(&params, "0").await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"))
        }
        other => panic!("expected a 500 ERROR event, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after the ERROR");

    server.set_watch_fault(Some(WatchFault::EndAtOnce));
    let mut stream = api.watch(&params, "0").await.unwrap().boxed();
    assert!(stream.next().await.is_none(), "no event");
}

// ---------------------------------------------------------------------------------------------
// Accounting
// ---------------------------------------------------------------------------------------------

#[test]
fn counts_are_exact_by_verb_and_status() {
    let server = TestApiServer::start();
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 404);
    assert_eq!(conn.call("POST", LEASES, Some(&lease_body("x", "a", None))).status, 201);
    assert_eq!(conn.call("POST", LEASES, Some(&lease_body("x", "a", None))).status, 409);
    assert_eq!(conn.call("PUT", &format!("{LEASES}/x"), Some(&replace_body(&server, "x", "b"))).status, 200);
    assert_eq!(conn.call("PUT", &format!("{LEASES}/x"), Some(&lease_body("x", "c", Some("1")))).status, 409);
    assert_eq!(conn.call("GET", LEASES, None).status, 200);
    server.fail_next(1, 503);
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 503);
    assert_eq!(conn.call("GET", "/version", None).status, 200);
    assert_eq!(conn.call("DELETE", &format!("{LEASES}/x"), None).status, 200);
    conn.watch("timeoutSeconds=1");
    assert!(matches!(conn.read_chunk(), Chunk::End));

    let expected: std::collections::BTreeMap<(String, u16), usize> = [
        (("get", 404), 1),
        (("create", 201), 1),
        (("create", 409), 1),
        (("update", 200), 1),
        (("update", 409), 1),
        (("list", 200), 1),
        (("get", 503), 1),
        (("version", 200), 1),
        (("delete", 200), 1),
        (("watch", 200), 1),
    ]
    .into_iter()
    .map(|((verb, status), n)| ((verb.to_string(), status), n))
    .collect();
    assert_eq!(server.counts(), expected);
    assert_eq!(server.count("get"), 2);
    let statuses: Vec<(&str, u16)> = server.requests().iter().map(|r| (r.verb, r.status)).collect();
    assert_eq!(
        statuses,
        [
            ("get", 404),
            ("create", 201),
            ("create", 409),
            ("update", 200),
            ("update", 409),
            ("list", 200),
            ("get", 503),
            ("version", 200),
            ("delete", 200),
            ("watch", 200)
        ]
    );
    server.reset_counts();
    assert!(server.counts().is_empty());
    assert_eq!(server.requests().len(), 10, "the log is kept");
    assert_eq!(conn.call("GET", &format!("{LEASES}/x"), None).status, 404);
    assert_eq!(server.counts().into_iter().collect::<Vec<_>>(), [(("get".to_string(), 404), 1)]);
}

#[test]
fn waits_wake_on_requests_and_watches_and_time_out_otherwise() {
    let server = TestApiServer::start();
    assert!(!server.wait_for_watch_count(1, Duration::from_millis(50)));
    assert!(!server.wait_for_requests(|log| !log.is_empty(), Duration::from_millis(50)));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut conn = Conn::open(&server);
            conn.watch("timeoutSeconds=120");
            // Hold the watch until the main thread saw it, then go away.
            assert!(
                server
                    .wait_for_counts(|counts| counts.contains_key(&("get".to_string(), 404)), crate::support::PATIENCE)
            );
        });
        assert!(server.wait_for_watch_count(1, crate::support::PATIENCE));
        assert!(server.wait_for_requests(
            |log| log.iter().any(|r| r.verb == "watch" && r.status == 200),
            crate::support::PATIENCE
        ));
        assert_eq!(call(&server, "GET", &format!("{LEASES}/x"), None).status, 404);
    });
    assert!(server.wait_for_watch_count(0, crate::support::PATIENCE));
}

/// Not a test: serves a test API server until killed, writing its kubeconfig to
/// `$MPSYNC_SERVE_KUBECONFIG`. Lets the whole suite run in "real cluster" mode against it:
/// `cargo test --test e2e serve_test_apiserver -- --ignored &` then
/// `MPSYNC_TEST_KUBECONFIG=$that_path cargo test`.
#[test]
#[ignore]
fn serve_test_apiserver() {
    let Some(path) = std::env::var_os("MPSYNC_SERVE_KUBECONFIG") else { return };
    let server = crate::support::apiserver::TestApiServer::start();
    std::fs::write(&path, server.kubeconfig_yaml("default")).unwrap();
    loop {
        std::thread::park();
    }
}
