//! A guest that tries what a hostile or buggy skill would: sleep, spin, flood stdout, read
//! outside its grants, snoop the environment, connect where it may not, keep global state.
//! Input: `{"do": "<action>", ...}`; output: what happened, so tests can assert on it.
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;
use tend_sdk::{
    Diagnose, SkillError,
    serde_json::{Value, json},
};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(Deserialize)]
struct Input {
    #[serde(rename = "do")]
    action: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    addr: String,
    #[serde(default)]
    bytes: usize,
}

/// GET http://<authority>/ through wasi:http; reports the status or the error code.
fn http_get(authority: &str) -> Value {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    let future = match outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(code) => return json!({ "ok": false, "error": format!("{code:?}") }),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => json!({ "ok": true, "status": response.status() }),
        Some(Ok(Err(code))) => json!({ "ok": false, "error": format!("{code:?}") }),
        other => json!({ "ok": false, "error": format!("{other:?}") }),
    }
}

/// Resolve `name` through wasi:sockets/ip-name-lookup; reports the addresses or the error code.
fn lookup(name: &str) -> Value {
    use wasi::sockets::instance_network::instance_network;
    use wasi::sockets::ip_name_lookup::resolve_addresses;
    use wasi::sockets::network::ErrorCode;
    let network = instance_network();
    let stream = match resolve_addresses(&network, name) {
        Ok(s) => s,
        Err(code) => return json!({ "ok": false, "error": format!("{code:?}") }),
    };
    let mut addresses = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(a)) => addresses.push(format!("{a:?}")),
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(code) => return json!({ "ok": false, "error": format!("{code:?}") }),
        }
    }
    json!({ "ok": true, "addresses": addresses })
}

struct Hostile;

impl Diagnose for Hostile {
    type Input = Input;
    type Output = Value;
    fn run(input: Input) -> Result<Value, SkillError> {
        let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        match input.action.as_str() {
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(json!({ "slept": true }))
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "flood" => {
                let line = [b'x'; 1023];
                let mut out = std::io::stdout();
                let mut written = 0;
                while written < input.bytes {
                    let _ = out.write_all(&line);
                    let _ = out.write_all(b"\n");
                    written += 1024;
                }
                let _ = out.flush();
                eprintln!("flooded {written} bytes");
                Ok(json!({ "written": written }))
            }
            "read" => {
                let mut text = String::new();
                match std::fs::File::open(&input.path).and_then(|mut f| f.read_to_string(&mut text))
                {
                    Ok(_) => Ok(
                        json!({ "read": true, "bytes": text.len(), "head": text.chars().take(64).collect::<String>() }),
                    ),
                    Err(e) => Ok(json!({ "read": false, "error": e.to_string() })),
                }
            }
            "write" => match std::fs::write(&input.path, b"written by a skill") {
                Ok(()) => Ok(json!({ "written": true })),
                Err(e) => Ok(json!({ "written": false, "error": e.to_string() })),
            },
            "list" => match std::fs::read_dir(&input.path) {
                Ok(d) => Ok(
                    json!({ "entries": d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>() }),
                ),
                Err(e) => Ok(json!({ "error": e.to_string() })),
            },
            "env" => Ok(json!({
                "vars": std::env::vars().collect::<Vec<_>>(),
                "args": std::env::args().collect::<Vec<_>>(),
                "cwd": std::env::current_dir().map(|p| p.display().to_string()).ok(),
            })),
            "connect" => match std::net::TcpStream::connect(&input.addr) {
                Ok(mut s) => {
                    let _ = s.write_all(b"ping\n");
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).unwrap_or(0);
                    Ok(json!({ "connected": true, "reply": String::from_utf8_lossy(&buf[..n]) }))
                }
                Err(e) => Ok(json!({ "connected": false, "error": e.to_string() })),
            },
            "http" => Ok(http_get(&input.addr)),
            "lookup" => Ok(lookup(&input.addr)),
            "calls" => Ok(json!({ "calls": calls })),
            "panic" => panic!("hostile guest panics on purpose after {calls} calls"),
            "facts" => {
                use tend_sdk::host;
                let sys = host::system();
                let fs = host::filesystems();
                let mem = host::memory();
                let load = host::load();
                let procs = host::processes(host::ProcessSort::Rss, 3);
                let unit = host::unit_status("tend-test-missing.service");
                Ok(json!({
                    "hostname": sys.hostname,
                    "kernel": sys.kernel_release,
                    "uptime": sys.uptime_seconds,
                    "root": fs.iter().find(|f| f.mount_point == "/").map(|f| json!({
                        "total": f.total_bytes, "used": f.used_bytes, "avail": f.available_bytes,
                        "inodes_total": f.inodes_total
                    })),
                    "mem_total": mem.total_bytes,
                    "cpus": load.cpu_count,
                    "procs": procs.iter().map(|p| json!({"pid": p.pid, "name": p.name, "rss": p.rss_bytes})).collect::<Vec<_>>(),
                    "unit": match unit { Ok(u) => json!({"active": u.active_state}), Err(e) => json!({"code": e.code, "message": e.message}) },
                }))
            }
            "log" => {
                for i in 0..input.bytes {
                    tend_sdk::log::info(&format!("line {i}"));
                }
                Ok(json!({ "logged": input.bytes }))
            }
            other => Err(SkillError::new(
                "invalid-input",
                format!("unknown action {other:?}"),
            )),
        }
    }
}

tend_sdk::export_diagnose!(Hostile);
