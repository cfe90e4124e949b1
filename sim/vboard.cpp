// SPDX-License-Identifier: Apache-2.0
// The virtual board: the Verilated SoC (module `top`) behind a TCP socket.
//
// Bytes from the client go into `rx` and bytes from `tx` go to the client, at most one byte a
// cycle each way (the UART's bit timing is bypassed). One client is served at a time; a client
// that disconnects is dropped (its unsent input is discarded) and the next one is accepted once
// the device is no longer busy (a partial frame has timed out) or after a second.
// While no client is connected, tx__ready stays high and the device's bytes are discarded, so
// that a reply meant for a dropped client never reaches the next one.
//
// The clock runs while there is input to feed, the device is busy or bytes came out in the last
// --quiet cycles. Meanwhile sockets are checked every --check cycles, and at once when the input
// runs out or the tx stream pauses (a reply is complete), so that a system call costs at most
// one per reply or per --check cycles. Otherwise the harness blocks in poll(), and costs no CPU
// while idle.
//
// Verilator names the ports `rx__valid` ... of the Verilog module `rx___05Fvalid` ... in C++.
//
// stdout: `listening HOST:PORT` once ready; on SIGUSR1 and at exit (SIGTERM, SIGINT) a line
// `stats cycles=N busy_cycles=N clock_seconds=S wall_seconds=S cpu_seconds=S rx_bytes=N
// tx_bytes=N clients=N`, clock_seconds counting only the time spent clocking.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

namespace {

volatile sig_atomic_t g_stop = 0;
volatile sig_atomic_t g_report = 0;

void on_stop(int) { g_stop = 1; }
void on_report(int) { g_report = 1; }

double now(clockid_t clock) {
    timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    unsigned check = 4096;
    unsigned quiet = 64;
    int idle_ms = 500;
};

[[noreturn]] void usage(const char* argv0, const char* problem) {
    if (problem) std::fprintf(stderr, "%s: %s\n", argv0, problem);
    std::fprintf(stderr,
                 "usage: %s [--port P] [--host ADDR] [--check CYCLES] [--quiet CYCLES]\n"
                 "  --port P        TCP port to listen on, 0 for a free one (default 0)\n"
                 "  --host ADDR     IPv4 address to listen on (default 127.0.0.1)\n"
                 "  --check CYCLES  cycles between socket checks while clocking (default 4096)\n"
                 "  --quiet CYCLES  idle cycles before blocking in poll() (default 64)\n",
                 argv0);
    std::exit(problem ? 2 : 0);
}

Options parse(int argc, char** argv) {
    Options opt;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") usage(argv[0], nullptr);
        if (i + 1 >= argc) usage(argv[0], ("missing value after " + arg).c_str());
        const char* value = argv[++i];
        char* end = nullptr;
        long number = std::strtol(value, &end, 10);
        bool numeric = end && *end == '\0' && *value != '\0';
        if (arg == "--host") {
            opt.host = value;
        } else if (arg == "--port" && numeric && number >= 0 && number < 65536) {
            opt.port = static_cast<int>(number);
        } else if (arg == "--check" && numeric && number >= 1 && number <= (1L << 30)) {
            opt.check = static_cast<unsigned>(number);
        } else if (arg == "--quiet" && numeric && number >= 1 && number <= (1L << 30)) {
            opt.quiet = static_cast<unsigned>(number);
        } else {
            usage(argv[0], ("bad option or value: " + arg + " " + value).c_str());
        }
    }
    return opt;
}

class VirtualBoard {
public:
    explicit VirtualBoard(const Options& opt) : opt_(opt), top_(new Vtop{&context_}) {}

    ~VirtualBoard() {
        drop_client();
        if (listener_ >= 0) close(listener_);
        top_->final();
    }

    bool listen_on() {
        listener_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (listener_ < 0) return fail("socket");
        int one = 1;
        setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(opt_.port));
        if (inet_pton(AF_INET, opt_.host.c_str(), &addr.sin_addr) != 1) {
            std::fprintf(stderr, "vboard: not an IPv4 address: %s\n", opt_.host.c_str());
            return false;
        }
        if (bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
            return fail("bind");
        if (listen(listener_, 4) < 0) return fail("listen");
        socklen_t size = sizeof addr;
        getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &size);
        std::printf("listening %s:%d\n", opt_.host.c_str(), ntohs(addr.sin_port));
        std::fflush(stdout);
        return true;
    }

    void reset() {
        top_->rst = 1;
        top_->rx___05Fvalid = 0;
        top_->tx___05Fready = 0;
        for (int i = 0; i < 4; ++i) {
            top_->clk = 0;
            top_->eval();
            top_->clk = 1;
            top_->eval();
        }
        top_->rst = 0;
    }

    void run() {
        start_wall_ = now(CLOCK_MONOTONIC);
        unsigned quiet = 0;
        while (!g_stop) {
            double start = now(CLOCK_MONOTONIC);
            for (unsigned n = 0; n < opt_.check && quiet < opt_.quiet; ++n) {
                bool had_input = in_pos_ < in_.size();
                if (step()) {
                    quiet = 0;
                } else {
                    ++quiet;
                }
                if (had_input && in_pos_ == in_.size()) break;
                if (!out_.empty() && last_tx_ != flushed_tx_ &&
                    cycles_ - last_tx_ >= kReplyPause) {
                    flushed_tx_ = last_tx_;
                    break;
                }
            }
            clock_seconds_ += now(CLOCK_MONOTONIC) - start;
            if (g_report) {
                g_report = 0;
                report();
            }
            bool idle = quiet >= opt_.quiet || out_.size() >= kOutLimit;
            if (service(idle ? opt_.idle_ms : 0)) quiet = 0;
        }
        report();
    }

private:
    static constexpr size_t kInLimit = 1 << 16;
    static constexpr size_t kOutLimit = 1 << 20;
    static constexpr uint64_t kReplyPause = 16;

    bool fail(const char* what) {
        std::fprintf(stderr, "vboard: %s: %s\n", what, std::strerror(errno));
        return false;
    }

    // One clock cycle; true if anything happened (a byte moved, input waits or busy is high).
    bool step() {
        bool have_input = in_pos_ < in_.size();
        top_->rx___05Fvalid = have_input;
        top_->rx___05Fpayload = have_input ? in_[in_pos_] : 0;
        top_->tx___05Fready = out_.size() < kOutLimit;
        top_->clk = 0;
        top_->eval();
        bool rx_fire = have_input && top_->rx___05Fready;
        bool tx_fire = top_->tx___05Fvalid && top_->tx___05Fready;
        uint8_t tx_byte = top_->tx___05Fpayload;
        busy_ = top_->busy;
        top_->clk = 1;
        top_->eval();
        ++cycles_;
        busy_cycles_ += busy_;
        if (rx_fire) {
            ++in_pos_;
            ++rx_bytes_;
        }
        if (tx_fire) {
            ++tx_bytes_;
            last_tx_ = cycles_;
            if (client_ >= 0) out_.push_back(tx_byte);
        }
        return have_input || tx_fire || busy_;
    }

    void drop_client() {
        if (client_ < 0) return;
        close(client_);
        client_ = -1;
        in_.clear();
        in_pos_ = 0;
        out_.clear();
        settle_until_ = now(CLOCK_MONOTONIC) + 1.0;
    }

    bool may_accept() const {
        return client_ < 0 && (!busy_ || now(CLOCK_MONOTONIC) >= settle_until_);
    }

    void flush() {
        size_t sent = 0;
        while (client_ >= 0 && sent < out_.size()) {
            ssize_t n = send(client_, out_.data() + sent, out_.size() - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<size_t>(n);
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else {
                drop_client();
                return;
            }
        }
        out_.erase(out_.begin(), out_.begin() + static_cast<long>(sent));
    }

    // Moves bytes between the sockets and the buffers; waits up to timeout_ms for something to
    // happen. Returns whether input arrived or a client came.
    bool service(int timeout_ms) {
        flush();
        pollfd fds[2];
        int count = 0, listen_index = -1, client_index = -1;
        bool accepting = may_accept();
        if (accepting) {
            fds[count] = {listener_, POLLIN, 0};
            listen_index = count++;
        }
        if (client_ >= 0) {
            short events = (out_.empty() ? 0 : POLLOUT);
            if (in_.size() - in_pos_ < kInLimit) events |= POLLIN;
            fds[count] = {client_, events, 0};
            client_index = count++;
        }
        int ready = poll(fds, static_cast<nfds_t>(count), timeout_ms);
        if (ready <= 0) return false;
        bool woke = false;
        if (client_index >= 0 && fds[client_index].revents) {
            if (fds[client_index].revents & POLLOUT) flush();
            if (client_ >= 0 && (fds[client_index].revents & (POLLIN | POLLHUP | POLLERR)))
                woke |= receive();
        }
        if (listen_index >= 0 && (fds[listen_index].revents & POLLIN) && client_ < 0) {
            int fd = accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                client_ = fd;
                ++clients_;
                woke = true;
            }
        }
        return woke;
    }

    bool receive() {
        if (in_pos_) {
            in_.erase(in_.begin(), in_.begin() + static_cast<long>(in_pos_));
            in_pos_ = 0;
        }
        size_t old = in_.size();
        if (old >= kInLimit) return false;
        in_.resize(kInLimit);
        ssize_t n;
        do {
            n = recv(client_, in_.data() + old, kInLimit - old, 0);
        } while (n < 0 && errno == EINTR);
        if (n > 0) {
            in_.resize(old + static_cast<size_t>(n));
            return true;
        }
        in_.resize(old);
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) drop_client();
        return false;
    }

    void report() {
        std::printf("stats cycles=%llu busy_cycles=%llu clock_seconds=%.6f wall_seconds=%.6f "
                    "cpu_seconds=%.6f rx_bytes=%llu tx_bytes=%llu clients=%llu\n",
                    static_cast<unsigned long long>(cycles_),
                    static_cast<unsigned long long>(busy_cycles_), clock_seconds_,
                    now(CLOCK_MONOTONIC) - start_wall_, now(CLOCK_PROCESS_CPUTIME_ID),
                    static_cast<unsigned long long>(rx_bytes_),
                    static_cast<unsigned long long>(tx_bytes_),
                    static_cast<unsigned long long>(clients_));
        std::fflush(stdout);
    }

    Options opt_;
    VerilatedContext context_;
    std::unique_ptr<Vtop> top_;
    int listener_ = -1;
    int client_ = -1;
    std::vector<uint8_t> in_;
    size_t in_pos_ = 0;
    std::vector<uint8_t> out_;
    bool busy_ = false;
    double settle_until_ = 0;
    double start_wall_ = 0;
    double clock_seconds_ = 0;
    uint64_t last_tx_ = 0, flushed_tx_ = 0;
    uint64_t cycles_ = 0, busy_cycles_ = 0, rx_bytes_ = 0, tx_bytes_ = 0, clients_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Options opt = parse(argc, argv);
    struct sigaction action {};
    action.sa_handler = on_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    action.sa_handler = on_report;
    sigaction(SIGUSR1, &action, nullptr);
    signal(SIGPIPE, SIG_IGN);

    VirtualBoard board(opt);
    board.reset();
    if (!board.listen_on()) return 1;
    board.run();
    return 0;
}
