#include "nets/conv_bn_net.h"

#include <cmath>

namespace llr::nets {

ConvBnNet ConvBnNet::create(Generator& gen, int64_t in_channels, int64_t width, int64_t classes, DType dtype,
                            Act act) {
  ConvBnNet net;
  net.act = act;
  auto he = [&](const Shape& s, int64_t fan_in, Layout layout) {
    return gen.normal(s, 0.0, std::sqrt(2.0 / double(fan_in)), dtype, layout);
  };
  net.w1 = he({width, 3, 3, in_channels}, 9 * in_channels, Layout::krsc);
  net.w2 = he({width, 3, 3, width}, 9 * width, Layout::krsc);
  // Scales and shifts away from their usual 1/0 so that a test sees every parameter's effect.
  net.g1 = gen.uniform({width}, 0.5, 1.5, dtype);
  net.b1 = gen.uniform({width}, -0.5, 0.5, dtype);
  net.g2 = gen.uniform({width}, 0.5, 1.5, dtype);
  net.b2 = gen.uniform({width}, -0.5, 0.5, dtype);
  net.fc_w = he({classes, width}, width, Layout::plain);
  net.fc_b = gen.uniform({classes}, -0.1, 0.1, dtype);
  return net;
}

Tensor ConvBnNet::forward(const Tensor& x) const {
  Tensor h = conv2d(x, w1, {}, {1, 1});
  BatchStats s1 = batch_stats(h);
  h = activation(act, batch_norm(h, s1.mean, s1.var, g1, b1, eps));
  h = conv2d(h, w2, {}, {2, 1});
  BatchStats s2 = batch_stats(h);
  h = activation(act, batch_norm(h, s2.mean, s2.var, g2, b2, eps));
  return linear(global_avg_pool(h), fc_w, fc_b);
}

}  // namespace llr::nets
