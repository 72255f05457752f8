// ShmRegion and ShmFaultGuard: the cpu backend maps only what its client could open itself,
// only the registered range, survives the client truncating the object, and allocates the
// objects it creates up front.
#include "daemon/backends/cpu/shm_region.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/backends/cpu/shm_fault_guard.h"
#include "daemon/backends/cpu/stale_shm.h"

namespace epd {
namespace {

std::string UniqueName() {
  static std::atomic<int> next{0};
  return "/epd-shm-test-" + std::to_string(getpid()) + "-" + std::to_string(next++);
}

// A frontend-made object of `bytes` with `mode`; unlinked by the destructor.
class ClientObject {
 public:
  ClientObject(size_t bytes, mode_t mode) : name_(UniqueName()) {
    const int fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, mode);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(fchmod(fd, mode), 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    close(fd);
  }
  ~ClientObject() { shm_unlink(name_.c_str()); }
  const std::string& name() const { return name_; }
  void Truncate(off_t bytes) const {
    const int fd = shm_open(name_.c_str(), O_RDWR, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, bytes), 0);
    close(fd);
  }

 private:
  std::string name_;
};

int64_t MappedKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoll(line.substr(7));
  }
  return -1;
}

TEST(MayOpenReadWrite, FollowsTheOneClassThatAppliesLikeTheKernel) {
  const MemoryRequester alice{1000, {1000, 50}};
  EXPECT_TRUE(MayOpenReadWrite(1000, 1000, 0600, alice));
  EXPECT_FALSE(MayOpenReadWrite(1000, 1000, 0400, alice));
  EXPECT_FALSE(MayOpenReadWrite(1000, 1000, 0066, alice));  // owner class has no rw
  EXPECT_TRUE(MayOpenReadWrite(0, 50, 0660, alice));        // via a supplementary group
  EXPECT_FALSE(MayOpenReadWrite(0, 50, 0640, alice));
  EXPECT_FALSE(MayOpenReadWrite(0, 0, 0600, alice));  // root's private object
  EXPECT_FALSE(MayOpenReadWrite(0, 0, 0604, alice));
  EXPECT_TRUE(MayOpenReadWrite(0, 0, 0666, alice));
  EXPECT_TRUE(MayOpenReadWrite(1, 1, 0000, MemoryRequester{0, {0}}));  // root may anyway
}

TEST(ShmRegionOpen, RefusesAnObjectTheRequesterCouldNotOpenItself) {
  ClientObject secret(4096, 0600);  // owned by this test's user
  const auto self = static_cast<int64_t>(geteuid());
  const MemoryRequester stranger{self == 0 ? 65534 : self + 1, {65534}};
  auto refused = ShmRegion::Open(secret.name(), "source.shm_name", 0, 4096, stranger);
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("source.shm_name"), std::string::npos);
  const MemoryRequester owner{self, {}};
  EXPECT_TRUE(ShmRegion::Open(secret.name(), "source.shm_name", 0, 4096, owner).ok());
}

TEST(ShmRegionOpen, RefusesLinksAndNonRegularFiles) {
  ClientObject target(4096, 0666);
  const std::string link = UniqueName();
  ASSERT_EQ(symlink(("/dev/shm" + target.name()).c_str(), ("/dev/shm" + link).c_str()), 0);
  EXPECT_FALSE(ShmRegion::Open(link, "source.shm_name", 0, 4096).ok());
  unlink(("/dev/shm" + link).c_str());
  const std::string fifo = UniqueName();
  ASSERT_EQ(mkfifo(("/dev/shm" + fifo).c_str(), 0666), 0);
  auto opened = ShmRegion::Open(fifo, "source.shm_name", 0, 4096);
  EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument) << opened.status().ToString();
  unlink(("/dev/shm" + fifo).c_str());
}

TEST(ShmRegionOpen, MapsOnlyTheRegisteredRangeOfASparseObject) {
  constexpr uint64_t kHuge = uint64_t{1} << 40;  // 1 TiB, sparse: costs no memory
  ClientObject sparse(kHuge, 0600);
  const int64_t before = MappedKiB();
  auto region = ShmRegion::Open(sparse.name(), "source.shm_name", kHuge - 8192 + 100, 4096);
  ASSERT_TRUE(region.ok()) << region.status().ToString();
  EXPECT_EQ((*region)->size(), 4096u);
  EXPECT_LT(MappedKiB() - before, 1024) << "the whole object was mapped";
  static_cast<char*>((*region)->data())[4095] = 1;  // the range is really there
  auto outside = ShmRegion::Open(sparse.name(), "source.shm_name", kHuge - 100, 4096);
  EXPECT_EQ(outside.status().code(), StatusCode::kInvalidArgument);
}

TEST(ShmFaultGuard, ATruncatedObjectBreaksItsRangeInsteadOfTheProcess) {
  ClientObject object(3 * 4096, 0600);
  auto region = ShmRegion::Open(object.name(), "source.shm_name", 0, 3 * 4096);
  ASSERT_TRUE(region.ok());
  auto* bytes = static_cast<volatile char*>((*region)->data());
  bytes[0] = 7;
  EXPECT_FALSE((*region)->Broken());
  object.Truncate(0);
  bytes[4096] = 1;  // SIGBUS without the guard
  const char seen = bytes[2 * 4096];
  EXPECT_EQ(seen, 0);
  EXPECT_TRUE((*region)->Broken());
  EXPECT_TRUE(ShmFaultGuard::BrokenAt((*region)->data(), 1));
}

TEST(ShmFaultGuardDeathTest, AFaultOutsideWatchedRangesStillKillsTheProcess) {
  ASSERT_TRUE(ShmFaultGuard::Install().ok());
  ClientObject object(4096, 0600);
  EXPECT_EXIT(
      {
        const int fd = shm_open(object.name().c_str(), O_RDWR, 0);
        auto* data = static_cast<volatile char*>(
            mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        if (ftruncate(fd, 0) != 0) _exit(3);
        data[0] = 1;  // a real bug: not a registered client range
        _exit(0);
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

TEST(ShmRegionCreate, ObjectsAreGroupReadWriteWhateverTheUmask) {
  const mode_t old = umask(077);
  auto region = ShmRegion::Create(UniqueName(), 4096);
  umask(old);
  ASSERT_TRUE(region.ok());
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm" + (*region)->name()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

// Runs `body` in a child with its own mount namespace and a 1 MiB /dev/shm; the child's exit
// code is the result (77: the namespace could not be made).
int InTinyShm(const std::function<int()>& body) {
  const pid_t child = fork();
  if (child == 0) {
    if (unshare(CLONE_NEWNS) != 0) _exit(77);
    if (mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(77);
    if (mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=1m") != 0) _exit(77);
    _exit(body());
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(ShmRegionCreate, AnObjectLargerThanDevShmIsResourceExhaustedNotAFaultLater) {
  const int result = InTinyShm([] {
    auto region = ShmRegion::Create(UniqueName(), 8 << 20);
    if (region.ok()) return 1;
    if (region.status().code() != StatusCode::kResourceExhausted) return 2;
    // The failed object is gone, and a handle of a big group fails the same way.
    auto backend = CreateCpuBackend({1, std::chrono::milliseconds(100)});
    GroupConfig config;
    config.name = "big";
    config.ranks = {0};
    config.experts = 4;
    config.hidden = 4096;
    config.max_tokens_per_rank = 1024;
    config.top_k = 2;
    config.dtype = DType::kFp32;
    auto group = (*backend)->CreateGroup(config);
    if (!group.ok()) return 3;
    auto handle = (*backend)->CreateHandle(**group, 0);
    if (handle.ok()) return 4;
    return handle.status().code() == StatusCode::kResourceExhausted ? 0 : 5;
  });
  if (result == 77) GTEST_SKIP() << "needs CAP_SYS_ADMIN to mount a small tmpfs (run as root)";
  EXPECT_EQ(result, 0);
}

TEST(ReclaimStaleShm, RemovesOnlyObjectsOfDaemonsThatAreGone) {
  // A private directory stands in for /dev/shm: the predicate below calls every other pid
  // gone, which must never touch the objects of daemons really running on this machine.
  char dir_template[] = "/tmp/epd-stale-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const pid_t live = 4000001;
  const pid_t dead = 4000002;
  auto path = [&](const std::string& name) { return dir + "/" + name; };
  const std::string stale_handle = fmt::format("epd-{}-0badc0de-handle-0", dead);
  const std::string stale_fence = fmt::format("epd-{}-0badc0de-fence-12", dead);
  const std::string stale_group = fmt::format("epd-{}-0badc0de-group-3", dead);
  const std::string live_handle = fmt::format("epd-{}-0badc0de-handle-0", live);
  const std::string client_object = fmt::format("epd-client-{}-0", dead);
  for (const auto& name : {stale_handle, stale_fence, stale_group, live_handle, client_object}) {
    std::ofstream(path(name)) << "x";
  }
  EXPECT_EQ(ReclaimStaleShm(dir, [&](pid_t pid) { return pid == live; }), 3);
  EXPECT_NE(access(path(stale_handle).c_str(), F_OK), 0);
  EXPECT_NE(access(path(stale_fence).c_str(), F_OK), 0);
  EXPECT_NE(access(path(stale_group).c_str(), F_OK), 0);
  EXPECT_EQ(access(path(live_handle).c_str(), F_OK), 0);
  EXPECT_EQ(access(path(client_object).c_str(), F_OK), 0);  // not the daemon's to remove
  std::filesystem::remove_all(dir);
}

TEST(ReclaimStaleShm, KnowsARunningDaemonByItsName) {
  EXPECT_FALSE(IsRunningDaemon(getpid()));  // this test binary is not epd
  EXPECT_FALSE(IsRunningDaemon(4000003));
}

}  // namespace
}  // namespace epd
