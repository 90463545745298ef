//! A fork server for attempt processes: each worker keeps one `orch attempt-server`, loaded
//! and relocated once, which forks a process per attempt. An attempt then does not pay for
//! exec'ing the orch binary (4 to 5 ms of CPU for its 147,000 relocations and 900 page
//! faults; see docs/benchmarks.md), and is otherwise the same as `orch attempt`: its own
//! process group, limits, parent-death signal and standard streams, reaped with `wait4`.
//!
//! The server is single-threaded and starts no runtime, so forking it is safe; each forked
//! child then starts a runtime of its own and runs [`super::serve_child`]. The worker sends
//! it one byte per attempt with the child's three standard streams attached (`SCM_RIGHTS`)
//! and reads back fixed-size records: the child's pid once forked, its status and usage once
//! reaped (the server watches `SIGCHLD` through a signalfd). The server keeps one child
//! forked ahead (a spare, its runtime built), so that an attempt starts without waiting for
//! its fork; the worker writes the attempt's spec into the child's standard input while it
//! asks, so the child finds it there.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use tokio::sync::oneshot;

use super::Usage;
use super::child::Status;

/// A record from the server: kind, pid, wait status, peak RSS (KiB), CPU (ms).
const RECORD: usize = 1 + 4 + 4 + 8 + 8;
const STARTED: u8 = 1;
const EXITED: u8 = 2;

/// How an attempt process ended, once the server reaped it.
type Ended = io::Result<(Status, Usage)>;

/// What a forked attempt process gives its starter: its pid, and its end.
pub(super) struct Forked {
    pub pid: i32,
    pub exit: oneshot::Receiver<Ended>,
}

/// The worker's side: a thread of its own that starts the server (on first use and again
/// after it died) and sends it requests. Sends block when the server is slow to read, and a
/// blocked send must never hold a runtime thread: requests reach the thread on a channel.
#[derive(Clone, Default)]
pub struct ForkServer {
    client: Arc<OnceLock<mpsc::Sender<Request>>>,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkServer")
    }
}

/// One attempt to fork: its standard streams, and who waits for its pid.
struct Request {
    stdio: [OwnedFd; 3],
    reply: oneshot::Sender<io::Result<Forked>>,
}

struct Conn {
    socket: UnixStream,
    /// Requests sent, waiting for their pid, in order.
    starting: Mutex<VecDeque<oneshot::Sender<io::Result<Forked>>>>,
    /// Forked children, waiting for their end.
    running: Mutex<HashMap<i32, oneshot::Sender<Ended>>>,
    alive: AtomicBool,
    _server: std::process::Child,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ForkServer {
    /// Forks an attempt process whose standard streams are `stdio` (in, out, err).
    pub(super) async fn fork(&self, exe: &Path, stdio: [OwnedFd; 3]) -> io::Result<Forked> {
        let client = match self.client.get() {
            Some(client) => client,
            None => {
                let (tx, rx) = mpsc::channel();
                let exe = exe.to_path_buf();
                std::thread::Builder::new()
                    .name("orch-fork-client".to_string())
                    .spawn(move || send_requests(&exe, &rx))?;
                // Another caller may have started one first: its thread serves, this one
                // ends as soon as its channel is dropped.
                let _ = self.client.set(tx);
                self.client
                    .get()
                    .ok_or_else(|| io::Error::other("the fork client did not start"))?
            }
        };
        let (reply, forked) = oneshot::channel();
        client
            .send(Request { stdio, reply })
            .map_err(|_| io::Error::other("the fork client stopped"))?;
        forked
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the attempt server stopped")))
    }
}

/// The fork client's thread: sends each request to the server, starting it when needed,
/// until every [`ForkServer`] handle is gone.
fn send_requests(exe: &Path, requests: &mpsc::Receiver<Request>) {
    let mut conn: Option<Arc<Conn>> = None;
    while let Ok(Request { stdio, reply }) = requests.recv() {
        let current = match conn.as_ref().filter(|c| c.alive.load(Ordering::SeqCst)) {
            Some(c) => Arc::clone(c),
            None => match connect(exe) {
                Ok(c) => {
                    conn = Some(Arc::clone(&c));
                    c
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            },
        };
        lock(&current.starting).push_back(reply);
        if let Err(e) = send_fds(&current.socket, &stdio) {
            current.alive.store(false, Ordering::SeqCst);
            // The reader fails every waiter once the server is gone; this one was not sent.
            if let Some(waiter) = lock(&current.starting).pop_back() {
                let _ = waiter.send(Err(e));
            }
        }
    }
}

/// Starts the server, and a thread that reads its replies.
fn connect(exe: &Path) -> io::Result<Arc<Conn>> {
    let started = Arc::new(start(exe)?);
    let reader = Arc::clone(&started);
    std::thread::Builder::new()
        .name("orch-attempt-server".to_string())
        .spawn(move || read_replies(&reader))?;
    Ok(started)
}

/// Starts `exe attempt-server` with one end of a socket pair as its standard input, dying
/// with this process's thread that started it.
fn start(exe: &Path) -> io::Result<Conn> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("attempt-server")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl(2) is async-signal-safe and allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let server = command.spawn()?;
    Ok(Conn {
        socket: ours,
        starting: Mutex::default(),
        running: Mutex::default(),
        alive: AtomicBool::new(true),
        _server: server,
    })
}

/// Routes the server's records to their waiters until it stops; then fails every waiter.
fn read_replies(conn: &Conn) {
    let mut socket = &conn.socket;
    let mut record = [0u8; RECORD];
    while socket.read_exact(&mut record).is_ok() {
        let pid = i32::from_ne_bytes([record[1], record[2], record[3], record[4]]);
        match record[0] {
            STARTED => {
                let Some(waiter) = lock(&conn.starting).pop_front() else {
                    continue;
                };
                if pid <= 0 {
                    let _ = waiter.send(Err(io::Error::other("the attempt server cannot fork")));
                    continue;
                }
                let (tx, exit) = oneshot::channel();
                lock(&conn.running).insert(pid, tx);
                let _ = waiter.send(Ok(Forked { pid, exit }));
            }
            EXITED => {
                let status = i32::from_ne_bytes([record[5], record[6], record[7], record[8]]);
                let number = |at: usize| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&record[at..at + 8]);
                    i64::from_ne_bytes(bytes)
                };
                let usage = Usage {
                    peak_rss_bytes: Some(number(9).saturating_mul(1024)),
                    cpu_ms: Some(number(17)),
                };
                if let Some(waiter) = lock(&conn.running).remove(&pid) {
                    let _ = waiter.send(Ok((Status(status), usage)));
                }
            }
            _ => break,
        }
    }
    conn.alive.store(false, Ordering::SeqCst);
    for waiter in lock(&conn.starting).drain(..) {
        let _ = waiter.send(Err(io::Error::other("the attempt server stopped")));
    }
    for (_, waiter) in lock(&conn.running).drain() {
        let _ = waiter.send(Err(io::Error::other(
            "the attempt server stopped before the attempt process ended",
        )));
    }
}

/// The room a control message with three descriptors takes.
fn control_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((3 * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// The one-byte buffer of a request.
fn one_byte(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A message over `iov` with the control buffer `control`; both must outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; every field that matters is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

/// Sends one byte with `fds` attached.
fn send_fds(socket: &UnixStream, fds: &[OwnedFd; 3]) -> io::Result<()> {
    let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    // SAFETY: the socket and the descriptors are open for as long as the call.
    unsafe { send_raw_fds(socket.as_raw_fd(), &raw) }
}

/// Sends one byte with `fds` attached on `socket`.
unsafe fn send_raw_fds(socket: RawFd, fds: &[RawFd; 3]) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = one_byte(&mut byte);
    let mut control = vec![0u8; control_space()];
    let msg = message(&mut iov, &mut control);
    // SAFETY: the control buffer has room for one header with three descriptors.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), 3);
    }
    loop {
        // SAFETY: msg points at live buffers.
        let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if sent == 1 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The server: `orch attempt-server`, before any runtime or thread exists. Serves until its
/// worker closes the socket (its standard input), or dies (a parent-death signal).
pub fn serve(registry: fn() -> crate::tasks::Registry) -> ! {
    // SAFETY: plain libc calls on this single-threaded process's own state; every buffer
    // passed is owned here and outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        let signals = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if signals < 0 {
            eprintln!(
                "orch attempt-server: signalfd: {}",
                io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        // A child forked ahead, so that an attempt does not wait for its fork.
        let mut spare = fork_spare(signals, &chld, registry);
        loop {
            let mut polled = [
                libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: signals,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(polled.as_mut_ptr(), 2, -1) < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                std::process::exit(1);
            }
            if polled[1].revents != 0 {
                let mut info = [0u8; 128];
                while libc::read(signals, info.as_mut_ptr().cast(), info.len()) > 0 {}
                reap(&mut spare);
            }
            if polled[0].revents != 0 {
                let Some(fds) = receive_fds(0) else {
                    std::process::exit(0)
                };
                match spare.take() {
                    Some(ready) => hand_to_spare(ready, fds, signals, &chld, registry),
                    None => fork_attempt(fds, signals, &chld, registry),
                }
                spare = fork_spare(signals, &chld, registry);
            }
        }
    }
}

/// Reports every child that ended; forgets the spare if it was one of them.
unsafe fn reap(spare: &mut Option<Spare>) {
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the two values owned here.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
        if pid <= 0 {
            return;
        }
        if spare.as_ref().is_some_and(|s| s.pid == pid) {
            if let Some(gone) = spare.take() {
                // SAFETY: the socket to the spare that died, ours to close.
                unsafe {
                    libc::close(gone.socket);
                }
            }
            continue;
        }
        let millis = |t: libc::timeval| t.tv_sec * 1000 + t.tv_usec / 1000;
        let cpu = millis(usage.ru_utime) + millis(usage.ru_stime);
        write_record(EXITED, pid, status, usage.ru_maxrss, cpu);
    }
}

fn write_record(kind: u8, pid: i32, status: i32, rss_kib: i64, cpu_ms: i64) {
    let mut record = [0u8; RECORD];
    record[0] = kind;
    record[1..5].copy_from_slice(&pid.to_ne_bytes());
    record[5..9].copy_from_slice(&status.to_ne_bytes());
    record[9..17].copy_from_slice(&rss_kib.to_ne_bytes());
    record[17..25].copy_from_slice(&cpu_ms.to_ne_bytes());
    let mut written = 0;
    while written < RECORD {
        // SAFETY: writes from a live buffer to the socket, fd 0.
        let n = unsafe {
            libc::send(
                0,
                record[written..].as_ptr().cast(),
                RECORD - written,
                libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The worker is gone: so are we, by its parent-death signal.
            std::process::exit(0);
        }
        written += n as usize;
    }
}

/// Receives one message of three descriptors on `socket`; `None` when its other end closed.
unsafe fn receive_fds(socket: RawFd) -> Option<[RawFd; 3]> {
    let mut byte = [0u8; 1];
    let mut iov = one_byte(&mut byte);
    let mut control = vec![0u8; control_space()];
    let mut msg = message(&mut iov, &mut control);
    loop {
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n == 1 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
    // SAFETY: the kernel filled the control buffer; its first header holds the descriptors.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let mut fds = [0 as RawFd; 3];
        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.as_mut_ptr(), 3);
        Some(fds)
    }
}

/// A child forked ahead of its attempt, waiting on `socket` for its standard streams.
struct Spare {
    pid: i32,
    socket: RawFd,
}

/// Forks a spare: a child in its own process group that, once handed its standard streams,
/// runs an attempt as [`fork_attempt`]'s children do. `None` when it cannot be had; attempts
/// are then forked when asked for.
unsafe fn fork_spare(
    signals: RawFd,
    chld: &libc::sigset_t,
    registry: fn() -> crate::tasks::Registry,
) -> Option<Spare> {
    let mut pair = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return None;
    }
    let [ours, theirs] = pair;
    let server = std::process::id() as i32;
    // SAFETY: this process is single-threaded, so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the child's own process state.
        unsafe {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != server {
                libc::_exit(1);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, chld, std::ptr::null_mut());
            libc::close(signals);
            libc::close(ours);
            // The worker's socket is the server's, never an attempt's. Standard input stays
            // taken (by /dev/null) until the attempt's arrives, so that the runtime's
            // descriptors, made now, are never the ones its streams replace.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::close(null);
            }
        }
        // Everything an attempt needs before its streams: its runtime.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        // SAFETY: receives on this child's own socket.
        let Some(fds) = (unsafe { receive_fds(theirs) }) else {
            std::process::exit(0)
        };
        // SAFETY: the descriptors just received are this child's.
        unsafe {
            libc::close(theirs);
            for (target, fd) in fds.iter().enumerate() {
                libc::dup2(*fd, target as RawFd);
                libc::close(*fd);
            }
        }
        run_child(runtime, registry);
    }
    // SAFETY: the child's end, ours to close.
    unsafe {
        libc::close(theirs);
    }
    if pid < 0 {
        // SAFETY: our end, unused.
        unsafe {
            libc::close(ours);
        }
        return None;
    }
    // Both sides set the group, so that it exists before the worker may signal it.
    // SAFETY: setpgid on our own child.
    unsafe {
        libc::setpgid(pid, pid);
    }
    Some(Spare { pid, socket: ours })
}

/// Gives the attempt's standard streams `fds` to the spare and reports its pid; forks the
/// attempt anew when the spare cannot take them.
unsafe fn hand_to_spare(
    spare: Spare,
    fds: [RawFd; 3],
    signals: RawFd,
    chld: &libc::sigset_t,
    registry: fn() -> crate::tasks::Registry,
) {
    // SAFETY: sends on our socket to the spare; the descriptors are ours until closed.
    let sent = unsafe { send_raw_fds(spare.socket, &fds) }.is_ok();
    // SAFETY: our socket to the spare, done with either way.
    unsafe {
        libc::close(spare.socket);
    }
    if !sent {
        // SAFETY: a spare that cannot take its streams is of no use; it dies with its socket.
        unsafe {
            libc::kill(spare.pid, libc::SIGKILL);
            fork_attempt(fds, signals, chld, registry);
        }
        return;
    }
    for fd in fds {
        // SAFETY: the server's copies; the spare has its own now.
        unsafe {
            libc::close(fd);
        }
    }
    write_record(STARTED, spare.pid, 0, 0, 0);
}

/// Runs the attempt of this forked child on `runtime` and exits: `serve_child` reports and
/// exits the process itself. One attempt needs one thread: blocking work goes to
/// `spawn_blocking`, and starting no worker threads is much of what a short attempt costs.
fn run_child(
    runtime: io::Result<tokio::runtime::Runtime>,
    registry: fn() -> crate::tasks::Registry,
) -> ! {
    match runtime {
        Ok(runtime) => {
            runtime.block_on(super::serve_child(registry));
        }
        Err(e) => eprintln!("error: cannot start the async runtime: {e}"),
    }
    std::process::exit(1)
}

/// Forks the attempt process with `fds` as its standard streams and reports its pid.
unsafe fn fork_attempt(
    fds: [RawFd; 3],
    signals: RawFd,
    chld: &libc::sigset_t,
    registry: fn() -> crate::tasks::Registry,
) {
    let server = std::process::id() as i32;
    // SAFETY: this process is single-threaded, so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the child's own process state.
        unsafe {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != server {
                libc::_exit(1);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, chld, std::ptr::null_mut());
            libc::close(signals);
            for (target, fd) in fds.iter().enumerate() {
                libc::dup2(*fd, target as RawFd);
                libc::close(*fd);
            }
        }
        run_child(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            registry,
        );
    }
    for fd in fds {
        // SAFETY: the parent's copies, sent to it and now the child's.
        unsafe {
            libc::close(fd);
        }
    }
    if pid < 0 {
        // Reported as an attempt that ended at once, failing: the worker records why.
        write_record(STARTED, -1, 0, 0, 0);
        return;
    }
    // Both sides set the group, so that it exists before the worker may signal it.
    // SAFETY: setpgid on our own child.
    unsafe {
        libc::setpgid(pid, pid);
    }
    write_record(STARTED, pid, 0, 0, 0);
}

/// A pipe's two ends, both close-on-exec: (read, write).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
