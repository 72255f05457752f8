#include "daemon/core/group_registry.h"

#include <gtest/gtest.h>

namespace epd {
namespace {

GroupConfig Config(std::string name) {
  GroupConfig c;
  c.name = std::move(name);
  c.ranks = {0, 1};
  c.experts = 4;
  c.hidden = 16;
  c.max_tokens_per_rank = 8;
  c.top_k = 2;
  return c;
}

std::shared_ptr<Group> MakeGroup(std::string name, SessionId owner = 0) {
  auto group = std::make_shared<Group>();
  group->config = Config(std::move(name));
  group->owner = owner;
  group->persistent = owner == 0;
  return group;
}

class GroupRegistryTest : public ::testing::Test {
 protected:
  std::shared_ptr<GroupRegistry> registry_ =
      GroupRegistry::Create([this](Released r) { released_ += r.size(); });
  size_t released_ = 0;
};

TEST_F(GroupRegistryTest, FindsByNameAndRefusesAnotherShapeOfTheSameName) {
  ASSERT_TRUE(registry_->Add(MakeGroup("g")).ok());
  EXPECT_TRUE(registry_->Find("g").ok());
  EXPECT_EQ(registry_->Find("h").status().message(), "group 'h' does not exist");
  EXPECT_NE(registry_->FindSameShape(Config("g")).value(), nullptr);
  EXPECT_EQ(registry_->FindSameShape(Config("h")).value(), nullptr);
  GroupConfig other = Config("g");
  other.hidden = 32;
  EXPECT_EQ(registry_->FindSameShape(other).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(registry_->Add(MakeGroup("g")).code(), StatusCode::kAlreadyExists);
}

TEST_F(GroupRegistryTest, MembershipTokensCountExactlyWhileTheyLive) {
  auto group = MakeGroup("g");
  group->creator_uid = 1000;  // persistent, created by a session of uid 1000
  ASSERT_TRUE(registry_->Add(group).ok());
  {
    GroupMembership a = registry_->Join(group).value();
    GroupMembership b = registry_->Join(group).value();
    EXPECT_EQ(registry_->members("g"), 2);
    EXPECT_EQ(registry_->Destroy("g", /*caller=*/5, /*caller_uid=*/1000).message(),
              "group 'g' still has 2 handles");
    GroupMembership moved = std::move(a);
    EXPECT_FALSE(a.active());
    EXPECT_EQ(registry_->members("g"), 2);
    moved.Leave();
    moved.Leave();  // once only
    EXPECT_EQ(registry_->members("g"), 1);
  }  // b uncounts itself
  EXPECT_EQ(registry_->members("g"), 0);
  EXPECT_TRUE(registry_->Destroy("g", /*caller=*/5, /*caller_uid=*/1000).ok());
  EXPECT_EQ(released_, 1u);
  EXPECT_EQ(registry_->Join(group).status().code(), StatusCode::kNotFound)
      << "a destroyed group takes no new members";
}

TEST_F(GroupRegistryTest, OnlyTheOwnerOrTheCreatorsUserDestroysAGroup) {
  ASSERT_TRUE(registry_->Add(MakeGroup("owned", 7)).ok());
  EXPECT_EQ(registry_->Destroy("owned", 8, 1000).code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(registry_->Destroy("owned", 7, 1000).ok());
  auto persistent = MakeGroup("persistent");
  persistent->creator_uid = 1000;
  ASSERT_TRUE(registry_->Add(persistent).ok());
  EXPECT_EQ(registry_->Destroy("persistent", 7, 1001).code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(registry_->Destroy("persistent", 9, 1000).ok());
  ASSERT_TRUE(registry_->Add(MakeGroup("config")).ok());  // no creator: the config file's
  EXPECT_EQ(registry_->Destroy("config", 7, 0).code(), StatusCode::kPermissionDenied);
  const GroupRegistry::Counts counts = registry_->CountFor(SessionId{7});
  EXPECT_EQ(counts.persistent, 1u);
  EXPECT_EQ(counts.owned, 0u);
}

TEST_F(GroupRegistryTest, AnOwnedGroupGoesWithItsOwnerOrItsLastMember) {
  auto idle = MakeGroup("idle", 7);
  auto busy = MakeGroup("busy", 7);
  auto persistent = MakeGroup("kept");
  ASSERT_TRUE(registry_->Add(idle).ok());
  ASSERT_TRUE(registry_->Add(busy).ok());
  ASSERT_TRUE(registry_->Add(persistent).ok());
  std::optional<GroupMembership> member = registry_->Join(busy).value();
  registry_->ReleaseOwnedBy(7);
  EXPECT_EQ(registry_->members("idle"), -1) << "no members: gone with its owner";
  EXPECT_EQ(registry_->members("busy"), 1) << "orphaned, still in use";
  EXPECT_EQ(registry_->members("kept"), 0);
  EXPECT_EQ(released_, 1u);
  member.reset();
  EXPECT_EQ(registry_->members("busy"), -1) << "gone with its last member";
  EXPECT_EQ(released_, 2u);
  EXPECT_EQ(registry_->List().size(), 1u);
}

TEST_F(GroupRegistryTest, AMembershipMayOutliveTheRegistryOwner) {
  auto group = MakeGroup("g", 7);
  ASSERT_TRUE(registry_->Add(group).ok());
  GroupMembership member = registry_->Join(group).value();
  registry_->ReleaseOwnedBy(7);
  registry_->DetachReleaser();
  std::weak_ptr<GroupRegistry> weak = registry_;
  registry_.reset();
  EXPECT_FALSE(weak.expired()) << "the membership keeps the registry alive";
  member.Leave();
  EXPECT_TRUE(weak.expired());
  EXPECT_EQ(released_, 0u) << "detached: dropped where it was dropped";
}

}  // namespace
}  // namespace epd
