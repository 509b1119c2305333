//! Worker-per-core: how `fhir-fence serve` spreads client connections over the machine's cores.
//!
//! Each worker is a thread with its own single-threaded runtime and its own listening socket on
//! the public address (`SO_REUSEPORT`: the kernel spreads new connections over the sockets). A
//! connection is accepted, its requests checked, forwarded over the worker's own upstream
//! connections (`upstream.rs` keeps one pool per thread) and answered on that one thread: no
//! hand-off between threads and no shared run queue on the request path, which is what a
//! work-stealing runtime spends much of a short request on. The admin listener, the reload
//! triggers and the audit writers run on the main thread's runtime, away from the workers.
use crate::live::Live;
use crate::server;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Connections waiting to be accepted, per worker socket.
const BACKLOG: i32 = 1024;

/// Binds `count` sockets to `addr`, all with `SO_REUSEPORT`, before any worker starts, so a bad
/// address fails at start-up. Port 0 is resolved once: every socket shares the first one's port.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// The number of workers: the configured count, or one per core the process may use.
pub fn count(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Serves the public sockets on one worker thread each and the admin listener on the current
/// runtime until `shutdown` resolves; then every worker drains its own connections, and this
/// returns once all have.
pub async fn run(
    live: Arc<Live>,
    sockets: Vec<std::net::TcpListener>,
    admin: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let threads = spawn(live.clone(), sockets, stopped.clone())?;
    let admin = tokio::spawn(server::serve_admin(live, admin, server::until(stopped)));
    shutdown.await;
    let _ = stop.send(true);
    let _ = admin.await;
    let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    Ok(())
}

/// Starts one worker thread per socket, each serving the public listener until `stop` says
/// true and then draining its own connections.
fn spawn(
    live: Arc<Live>,
    sockets: Vec<std::net::TcpListener>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (live, stop) = (live.clone(), stop.clone());
            std::thread::Builder::new().name(format!("fhir-fence-worker-{i}")).spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
                rt.block_on(async move {
                    tokio::spawn(pacemaker());
                    match tokio::net::TcpListener::from_std(socket) {
                        Ok(listener) => server::serve_public(live, listener, server::until(stop)).await,
                        Err(e) => tracing::error!(worker = i, error = %e, "worker cannot use its socket"),
                    }
                });
            })
        })
        .collect()
}

/// Keeps a timer due within a second on a worker's runtime, for the sake of the timers every
/// request starts (hyper's header-read timeout, the upstream timeout). Tokio wakes its own
/// driver (an eventfd write and one more `epoll_wait`) whenever a timer is registered that is
/// due before all the timers it had when it last went to sleep; with nothing due sooner, each
/// request's timers did that once. One wake-up a second instead.
async fn pacemaker() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
