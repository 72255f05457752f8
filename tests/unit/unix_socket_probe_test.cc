// The reasons for not reaching the daemon's socket: no such socket, permission
// denied (naming the group to join), nobody listening, not a socket.
#include "common/unix_socket_probe.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace epd {
namespace {

int BoundSocket(const std::string& path, bool listening) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  if (listening) {
    EXPECT_EQ(listen(fd, 4), 0);
  }
  return fd;
}

class SocketProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/tmp/epd-probe-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(SocketProbeTest, ParsesUnixAddressesOnly) {
  EXPECT_EQ(UnixSocketPathOf("unix:///run/epd/epd.sock"), "/run/epd/epd.sock");
  EXPECT_EQ(UnixSocketPathOf("unix:rel.sock"), "rel.sock");
  EXPECT_EQ(UnixSocketPathOf("127.0.0.1:5000"), "");
}

TEST_F(SocketProbeTest, NamesEachReason) {
  const std::string path = dir_ + "/epd.sock";
  Status missing = ProbeUnixSocket(path);
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("no such socket: " + path), std::string::npos);

  const int dead = BoundSocket(path, /*listening=*/false);
  Status refused = ProbeUnixSocket(path);
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.message().find("nobody listens"), std::string::npos) << refused.ToString();
  close(dead);
  std::filesystem::remove(path);

  const int live = BoundSocket(path, /*listening=*/true);
  EXPECT_TRUE(ProbeUnixSocket(path).ok());
  close(live);

  std::ofstream(dir_ + "/file") << "x";
  EXPECT_EQ(ProbeUnixSocket(dir_ + "/file").code(), StatusCode::kFailedPrecondition);

  // Permission: a socket in a directory only root may enter, probed by an unprivileged
  // child (root bypasses permission checks, so the test drops to `nobody`).
  if (geteuid() != 0) GTEST_SKIP() << "needs root to probe as another user";
  ASSERT_EQ(chmod(dir_.c_str(), 0700), 0);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t child = fork();
  if (child == 0) {
    close(pipe_fds[0]);
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
    const Status denied = ProbeUnixSocket(path);
    const std::string text = denied.ToString();
    (void)!write(pipe_fds[1], text.data(), text.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string text;
  char buffer[512];
  ssize_t n = 0;
  while ((n = read(pipe_fds[0], buffer, sizeof(buffer))) > 0) text.append(buffer, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child could not drop to nobody";
  EXPECT_NE(text.find("PERMISSION_DENIED: permission denied on " + dir_), std::string::npos)
      << text;
  EXPECT_NE(text.find("add this user to group"), std::string::npos) << text;
}

}  // namespace
}  // namespace epd
