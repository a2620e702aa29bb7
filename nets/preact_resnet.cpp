// PreAct ResNet-18 (He et al. 2016, identity mappings), as used throughout the robustness literature; parameter names
// follow tools/reference/models.py. The projection shortcut (when the width or stride changes) takes the block's
// first activation.
#include "nets/model.h"

namespace llr::nets {

namespace {

class PreActBlock {
 public:
  PreActBlock(Registry& r, const std::string& name, int64_t in, int64_t out, int stride, Init init)
      : projection_(stride != 1 || in != out),
        bn1_(r, name + ".bn1", in, init),
        conv1_(r, name + ".conv1", in, out, 3, stride, 1, init),
        bn2_(r, name + ".bn2", out, init),
        conv2_(r, name + ".conv2", out, out, 3, 1, 1, init) {
    if (projection_) shortcut_ = Conv2d(r, name + ".shortcut.0", in, out, 1, stride, 0, init);
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx, Act act) {
    Tensor a = bn1_.forward_act(x, ctx, act);
    Tensor skip = projection_ ? shortcut_.forward(a, ctx) : x;
    Tensor h = conv1_.forward(a, ctx);
    h = conv2_.forward(bn2_.forward_act(h, ctx, act), ctx);
    return add(h, skip);
  }

 private:
  bool projection_;
  BatchNorm bn1_;
  Conv2d conv1_;
  BatchNorm bn2_;
  Conv2d conv2_;
  Conv2d shortcut_;
};

class PreActResNet18 final : public Model {
 public:
  PreActResNet18(Act act, int64_t classes, Init init) : Model("preact-rn18", act, classes) {
    conv1_ = Conv2d(registry_, "conv1", 3, 64, 3, 1, 1, init);
    int64_t widths[4] = {64, 128, 256, 512};
    int64_t in = 64;
    for (int l = 0; l < 4; ++l)
      for (int i = 0; i < 2; ++i) {
        blocks_.emplace_back(registry_, "layer" + std::to_string(l + 1) + "." + std::to_string(i), in, widths[l],
                             (i == 0 && l > 0) ? 2 : 1, init);
        in = widths[l];
      }
    bn_ = BatchNorm(registry_, "bn", 512, init);
    linear_ = Linear(registry_, "linear", 512, classes, init);
  }

  Tensor forward(const Tensor& x, ForwardContext& ctx) override {
    ctx.next = 0;
    Tensor h = conv1_.forward(normalize_input(x, ctx), ctx);
    for (PreActBlock& b : blocks_) h = b.forward(h, ctx, act_);
    h = bn_.forward_act(h, ctx, act_);
    return linear_.forward(global_avg_pool(h), ctx);
  }

 private:
  Conv2d conv1_;
  std::vector<PreActBlock> blocks_;
  BatchNorm bn_;
  Linear linear_;
};

}  // namespace

std::unique_ptr<Model> make_preact_resnet18(Act act, int64_t classes, Init init) {
  return std::make_unique<PreActResNet18>(act, classes, init);
}

}  // namespace llr::nets
