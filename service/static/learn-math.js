// The lesson's mathematics, with no DOM: activations, losses, loss surfaces and optimizers.
// learn.js draws with these functions; the browser tests call them (window.LearnMath) and the
// page's own state (window.learnPage) to compare against numpy.
"use strict";

(() => {
  // ---- activation functions (Keras 3 definitions; derivative conventions at kinks noted) ------
  // SELU's constants: Klambauer et al. 2017, "Self-Normalizing Neural Networks".
  const SELU_ALPHA = 1.6732632423543772;
  const SELU_SCALE = 1.0507009873554805;
  const ELU_ALPHA = 1.0;
  const LEAKY_SLOPE = 0.2; // keras.layers.LeakyReLU(negative_slope=0.2), Keras 3's default

  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  const ACTIVATIONS = {
    identity: {
      label: "identity",
      formula: "f(x) = x",
      f: (x) => x,
      df: () => 1,
      note: "No activation: stacked layers collapse into one linear map. Fine for outputs of regressions.",
    },
    sigmoid: {
      label: "sigmoid",
      formula: "f(x) = 1 / (1 + e^(−x))",
      f: sigmoid,
      df: (x) => sigmoid(x) * (1 - sigmoid(x)),
      note: "Binary outputs (a probability). Saturates: for |x| > 5 the slope is under 0.01, so gradients vanish.",
    },
    relu: {
      label: "ReLU",
      formula: "f(x) = max(0, x)",
      f: (x) => Math.max(0, x),
      df: (x) => (x > 0 ? 1 : 0), // 0 at x = 0, as TensorFlow's gradient
      note: "The default for hidden layers: cheap, no saturation for x > 0. Dead units: stuck at x < 0, they never learn again.",
    },
    tanh: {
      label: "tanh",
      formula: "f(x) = (e^x − e^(−x)) / (e^x + e^(−x))",
      f: Math.tanh,
      df: (x) => 1 - Math.tanh(x) ** 2,
      note: "Zero-centred hidden units, recurrent nets. Saturates at ±1 like sigmoid: vanishing gradients in deep stacks.",
    },
    elu: {
      label: "ELU",
      formula: "f(x) = x if x > 0, else α(e^x − 1), α = 1",
      f: (x) => (x > 0 ? x : ELU_ALPHA * (Math.exp(x) - 1)),
      df: (x) => (x > 0 ? 1 : ELU_ALPHA * Math.exp(x)),
      note: "Smooth ReLU with negative outputs (mean activations nearer 0). Costs an exp; saturates at −α for very negative x.",
    },
    selu: {
      label: "SELU",
      formula: "f(x) = λx if x > 0, else λα(e^x − 1), λ ≈ 1.0507, α ≈ 1.6733",
      f: (x) => SELU_SCALE * (x > 0 ? x : SELU_ALPHA * (Math.exp(x) - 1)),
      df: (x) => SELU_SCALE * (x > 0 ? 1 : SELU_ALPHA * Math.exp(x)),
      note: "Self-normalising dense nets (with lecun_normal init). Breaks its promise with other inits, dropout or batch norm.",
    },
    softplus: {
      label: "softplus",
      formula: "f(x) = ln(1 + e^x)",
      f: (x) => Math.log1p(Math.exp(x)),
      df: sigmoid,
      note: "A smooth ReLU; outputs that must be positive (a rate, a scale). Slower to compute, and still saturates for x ≪ 0.",
    },
    softsign: {
      label: "softsign",
      formula: "f(x) = x / (1 + |x|)",
      f: (x) => x / (1 + Math.abs(x)),
      df: (x) => 1 / (1 + Math.abs(x)) ** 2,
      note: "A tanh that saturates polynomially, not exponentially. Still flat far out: gradients shrink like 1/x².",
    },
    hard_sigmoid: {
      label: "hard sigmoid",
      formula: "f(x) = 0 if x ≤ −3, 1 if x ≥ 3, else x/6 + 1/2",
      f: (x) => Math.min(1, Math.max(0, x / 6 + 0.5)),
      df: (x) => (x > -3 && x < 3 ? 1 / 6 : 0), // 0 at ±3, as relu6's gradient
      note: "A cheap sigmoid for phones and quantised nets. Gradient exactly 0 outside [−3, 3]: units there stop learning.",
    },
    exponential: {
      label: "exponential",
      formula: "f(x) = e^x",
      f: Math.exp,
      df: Math.exp,
      note: "Positive outputs that grow fast (a count's rate). Explodes: e^20 ≈ 5·10⁸ overflows activations and gradients.",
    },
    leaky_relu: {
      label: "leaky ReLU",
      formula: "f(x) = x if x > 0, else 0.2x",
      f: (x) => (x > 0 ? x : LEAKY_SLOPE * x),
      df: (x) => (x > 0 ? 1 : LEAKY_SLOPE),
      note: "ReLU without dead units: a small slope below 0 keeps gradients flowing. One more hyperparameter (the slope).",
    },
  };

  // ---- loss functions for one output (Keras definitions, epsilon clipping left out) ------------
  // y: the target; p: the prediction. grad is dL/dp. Classification losses take the target t in
  // [0, 1] (a probability of the positive class); hinge losses map it to y = 2t − 1 in [−1, 1] as
  // Keras does with 0/1 labels; the ten-class losses give the true class p and share 1 − p
  // evenly among the other nine (target: t and (1 − t)/9).
  const xlogy = (x, y) => (x === 0 ? 0 : x * Math.log(y));
  const HUBER_DELTA = 1.0;

  const LOSSES = {
    mae: {
      kind: "regression",
      label: "mean absolute error",
      formula: "|p − y|",
      f: (y, p) => Math.abs(p - y),
      grad: (y, p) => Math.sign(p - y),
      note: "Robust to outliers; constant gradient, so no slowing down near the answer.",
    },
    mse: {
      kind: "regression",
      label: "mean squared error",
      formula: "(p − y)²",
      f: (y, p) => (p - y) ** 2,
      grad: (y, p) => 2 * (p - y),
      note: "The default for regression; large errors dominate (outliers pull hard).",
    },
    huber: {
      kind: "regression",
      label: "Huber (δ = 1)",
      formula: "½(p − y)² if |p − y| ≤ δ, else δ(|p − y| − ½δ)",
      f: (y, p) => {
        const e = Math.abs(p - y);
        return e <= HUBER_DELTA ? 0.5 * e * e : HUBER_DELTA * (e - 0.5 * HUBER_DELTA);
      },
      grad: (y, p) => {
        const e = p - y;
        return Math.abs(e) <= HUBER_DELTA ? e : HUBER_DELTA * Math.sign(e);
      },
      note: "Squared near the target, absolute far away: MSE's smoothness without its outlier pull.",
    },
    log_cosh: {
      kind: "regression",
      label: "log-cosh",
      formula: "ln cosh(p − y)",
      // ln cosh(e) = |e| + ln(1 + e^(−2|e|)) − ln 2, which never overflows
      f: (y, p) => {
        const e = Math.abs(p - y);
        return e + Math.log1p(Math.exp(-2 * e)) - Math.LN2;
      },
      grad: (y, p) => Math.tanh(p - y),
      note: "Like Huber but smooth everywhere: about e²/2 when small, |e| − ln 2 when large.",
    },
    poisson: {
      kind: "regression",
      label: "Poisson",
      formula: "p − y·ln p   (p > 0)",
      f: (y, p) => p - xlogy(y, p),
      grad: (y, p) => 1 - y / p,
      note: "Counts (events per hour): the negative log-likelihood of a Poisson rate p, up to a constant.",
    },
    bce: {
      kind: "classification",
      label: "binary cross-entropy",
      formula: "−[t·ln p + (1 − t)·ln(1 − p)]",
      f: (t, p) => -(xlogy(t, p) + xlogy(1 - t, 1 - p)),
      grad: (t, p) => -t / p + (1 - t) / (1 - p),
      note: "Yes/no with a sigmoid output; punishes a confident wrong answer without bound.",
    },
    hinge: {
      kind: "classification",
      label: "hinge",
      formula: "max(0, 1 − y·s), y = 2t − 1, s a raw score",
      f: (t, s) => Math.max(0, 1 - (2 * t - 1) * s),
      grad: (t, s) => (1 - (2 * t - 1) * s > 0 ? -(2 * t - 1) : 0),
      note: "SVM-style margins: zero loss (and zero gradient) once the score is on the right side by 1.",
    },
    squared_hinge: {
      kind: "classification",
      label: "squared hinge",
      formula: "max(0, 1 − y·s)²",
      f: (t, s) => Math.max(0, 1 - (2 * t - 1) * s) ** 2,
      grad: (t, s) => -2 * (2 * t - 1) * Math.max(0, 1 - (2 * t - 1) * s),
      note: "A smooth hinge: its gradient fades to zero at the margin instead of jumping.",
    },
    cce: {
      kind: "classification",
      label: "categorical cross-entropy",
      formula: "−Σ tᵢ ln pᵢ over 10 classes",
      f: (t, p) => -(xlogy(t, p) + xlogy(1 - t, (1 - p) / 9)),
      grad: (t, p) => -t / p + (1 - t) / (1 - p),
      note: "The MNIST model's loss (softmax output): only the target's probability mass counts.",
    },
    kl: {
      kind: "classification",
      label: "Kullback–Leibler",
      formula: "Σ tᵢ ln(tᵢ / pᵢ) over 10 classes",
      f: (t, p) => xlogy(t, t) - xlogy(t, p) + xlogy(1 - t, 1 - t) - xlogy(1 - t, 1 - p),
      grad: (t, p) => -t / p + (1 - t) / (1 - p),
      note: "Cross-entropy minus the target's own entropy: same gradient, zero at p = t (distillation).",
    },
  };

  // The prediction axis each loss is drawn over, for a target y (regression) or t.
  function lossDomain(name, target) {
    if (name === "poisson") return [0.1, Math.max(4, 2 * target + 2)];
    if (name === "hinge" || name === "squared_hinge") return [-3, 3];
    if (LOSSES[name].kind === "classification") return [0.02, 0.98];
    return [target - 3, target + 3];
  }

  // ---- loss surfaces for gradient descent ------------------------------------------------------
  const SURFACES = {
    bowl: {
      label: "bowl",
      formula: "f(x, y) = x² + y²",
      view: [-2, 2, -2, 2],
      start: [-1.6, 1.4],
      minimum: [0, 0],
      f: (x, y) => x * x + y * y,
      grad: (x, y) => [2 * x, 2 * y],
    },
    valley: {
      label: "elongated valley",
      formula: "f(x, y) = x²/10 + 2y²",
      view: [-4, 4, -2, 2],
      start: [-3.5, 1.5],
      minimum: [0, 0],
      f: (x, y) => (x * x) / 10 + 2 * y * y,
      grad: (x, y) => [x / 5, 4 * y],
    },
    rosenbrock: {
      label: "Rosenbrock",
      formula: "f(x, y) = (1 − x)² + 100(y − x²)²",
      view: [-2, 2, -1, 3],
      start: [-1.5, 2.0],
      minimum: [1, 1],
      f: (x, y) => (1 - x) ** 2 + 100 * (y - x * x) ** 2,
      grad: (x, y) => [-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)],
    },
    saddle: {
      label: "saddle",
      formula: "f(x, y) = x² − y² + y⁴/4",
      view: [-2, 2, -2.5, 2.5],
      start: [-1.8, 0.05],
      minimum: [0, Math.SQRT2],
      f: (x, y) => x * x - y * y + (y ** 4) / 4,
      grad: (x, y) => [2 * x, -2 * y + y ** 3],
    },
  };

  // ---- optimizers: Keras 3's update rules, one step on a 2-vector ------------------------------
  // Each optimizer: init() -> state, and step(params, grad, state, h, t) -> new params, where t is
  // the 1-based step number and h the hyperparameters. Arrays are [x, y].
  const map2 = (a, fn) => [fn(a[0], 0), fn(a[1], 1)];

  const OPTIMIZERS = {
    // Plain gradient descent (Robbins & Monro 1951): θ ← θ − lr·g.
    sgd: {
      label: "SGD",
      hyper: { learning_rate: 0.1 },
      init: () => ({}),
      step: (p, g, s, h) => map2(p, (v, i) => v - h.learning_rate * g[i]),
    },
    // Heavy-ball momentum (Polyak 1964), as keras.optimizers.SGD(momentum=m):
    // v ← m·v − lr·g; θ ← θ + v.
    momentum: {
      label: "momentum",
      hyper: { learning_rate: 0.05, momentum: 0.9 },
      init: () => ({ v: [0, 0] }),
      step: (p, g, s, h) => {
        s.v = map2(s.v, (v, i) => h.momentum * v - h.learning_rate * g[i]);
        return map2(p, (v, i) => v + s.v[i]);
      },
    },
    // Nesterov's accelerated gradient (Nesterov 1983) in the form of Sutskever et al. 2013, as
    // keras.optimizers.SGD(momentum=m, nesterov=True): v ← m·v − lr·g; θ ← θ + m·v − lr·g.
    nesterov: {
      label: "Nesterov",
      hyper: { learning_rate: 0.05, momentum: 0.9 },
      init: () => ({ v: [0, 0] }),
      step: (p, g, s, h) => {
        s.v = map2(s.v, (v, i) => h.momentum * v - h.learning_rate * g[i]);
        return map2(p, (v, i) => v + h.momentum * s.v[i] - h.learning_rate * g[i]);
      },
    },
    // Adagrad (Duchi, Hazan & Singer 2011), as keras.optimizers.Adagrad:
    // a ← a + g²; θ ← θ − lr·g / √(a + ε), a starting at initial_accumulator_value.
    adagrad: {
      label: "Adagrad",
      hyper: { learning_rate: 0.5, initial_accumulator_value: 0.1, epsilon: 1e-7 },
      init: (h) => ({ a: [h.initial_accumulator_value, h.initial_accumulator_value] }),
      step: (p, g, s, h) => {
        s.a = map2(s.a, (a, i) => a + g[i] * g[i]);
        return map2(p, (v, i) => v - (h.learning_rate * g[i]) / Math.sqrt(s.a[i] + h.epsilon));
      },
    },
    // RMSprop (Tieleman & Hinton 2012, Coursera lecture 6e), as keras.optimizers.RMSprop:
    // r ← ρ·r + (1 − ρ)·g²; θ ← θ − lr·g / √(r + ε).
    rmsprop: {
      label: "RMSprop",
      hyper: { learning_rate: 0.05, rho: 0.9, epsilon: 1e-7 },
      init: () => ({ r: [0, 0] }),
      step: (p, g, s, h) => {
        s.r = map2(s.r, (r, i) => h.rho * r + (1 - h.rho) * g[i] * g[i]);
        return map2(p, (v, i) => v - (h.learning_rate * g[i]) / Math.sqrt(s.r[i] + h.epsilon));
      },
    },
    // Adadelta (Zeiler 2012), as keras.optimizers.Adadelta:
    // E[g²] ← ρ·E[g²] + (1 − ρ)·g²; Δ = −√(E[Δ²] + ε) / √(E[g²] + ε) · g;
    // E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²; θ ← θ + lr·Δ. (Zeiler uses lr = 1; Keras defaults to 0.001.)
    adadelta: {
      label: "Adadelta",
      hyper: { learning_rate: 1.0, rho: 0.95, epsilon: 1e-7 },
      init: () => ({ eg: [0, 0], ed: [0, 0] }),
      step: (p, g, s, h) => {
        s.eg = map2(s.eg, (e, i) => h.rho * e + (1 - h.rho) * g[i] * g[i]);
        const delta = map2(g, (gi, i) => (-Math.sqrt(s.ed[i] + h.epsilon) / Math.sqrt(s.eg[i] + h.epsilon)) * gi);
        s.ed = map2(s.ed, (e, i) => h.rho * e + (1 - h.rho) * delta[i] * delta[i]);
        return map2(p, (v, i) => v + h.learning_rate * delta[i]);
      },
    },
    // Adam (Kingma & Ba 2015, Algorithm 1 with the "ε-hat" form of section 2), as
    // keras.optimizers.Adam: m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
    // α_t = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ); θ ← θ − α_t·m / (√v + ε).
    adam: {
      label: "Adam",
      hyper: { learning_rate: 0.1, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 },
      init: () => ({ m: [0, 0], v: [0, 0] }),
      step: (p, g, s, h, t) => {
        s.m = map2(s.m, (m, i) => h.beta_1 * m + (1 - h.beta_1) * g[i]);
        s.v = map2(s.v, (v, i) => h.beta_2 * v + (1 - h.beta_2) * g[i] * g[i]);
        const alpha = (h.learning_rate * Math.sqrt(1 - h.beta_2 ** t)) / (1 - h.beta_1 ** t);
        return map2(p, (v, i) => v - (alpha * s.m[i]) / (Math.sqrt(s.v[i]) + h.epsilon));
      },
    },
    // Adamax (Kingma & Ba 2015, section 7.1, Algorithm 2), as keras.optimizers.Adamax:
    // m ← β₁m + (1 − β₁)g; u ← max(β₂u, |g|); θ ← θ − lr/(1 − β₁ᵗ) · m / (u + ε).
    adamax: {
      label: "Adamax",
      hyper: { learning_rate: 0.1, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 },
      init: () => ({ m: [0, 0], u: [0, 0] }),
      step: (p, g, s, h, t) => {
        s.m = map2(s.m, (m, i) => h.beta_1 * m + (1 - h.beta_1) * g[i]);
        s.u = map2(s.u, (u, i) => Math.max(h.beta_2 * u, Math.abs(g[i])));
        return map2(p, (v, i) => v - ((h.learning_rate / (1 - h.beta_1 ** t)) * s.m[i]) / (s.u[i] + h.epsilon));
      },
    },
    // Nadam (Dozat 2016, "Incorporating Nesterov Momentum into Adam") with the paper's momentum
    // schedule μ_t = β₁(1 − ½·0.96^(t/250)) (tf.keras's Nadam; Keras 3 writes 0.96^t), in
    // keras.optimizers.Nadam's form:
    // m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²; Π_t = Π_{t−1}·μ_t;
    // m̂ = μ_{t+1}·m/(1 − Π_t·μ_{t+1}) + (1 − μ_t)·g/(1 − Π_t); v̂ = v/(1 − β₂ᵗ);
    // θ ← θ − lr·m̂ / (√v̂ + ε).
    nadam: {
      label: "Nadam",
      hyper: { learning_rate: 0.1, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 },
      init: () => ({ m: [0, 0], v: [0, 0], product: 1 }),
      step: (p, g, s, h, t) => {
        const mu = h.beta_1 * (1 - 0.5 * 0.96 ** (0.004 * t));
        const muNext = h.beta_1 * (1 - 0.5 * 0.96 ** (0.004 * (t + 1)));
        const product = s.product * mu;
        const productNext = product * muNext;
        s.product = product;
        s.m = map2(s.m, (m, i) => h.beta_1 * m + (1 - h.beta_1) * g[i]);
        s.v = map2(s.v, (v, i) => h.beta_2 * v + (1 - h.beta_2) * g[i] * g[i]);
        const mHat = map2(s.m, (m, i) => (muNext * m) / (1 - productNext) + ((1 - mu) * g[i]) / (1 - product));
        const vHat = map2(s.v, (v) => v / (1 - h.beta_2 ** t));
        return map2(p, (v, i) => v - (h.learning_rate * mHat[i]) / (Math.sqrt(vHat[i]) + h.epsilon));
      },
    },
  };

  // Learning rates that make each optimizer's path instructive on each surface.
  const LEARNING_RATES = {
    bowl: { sgd: 0.1, momentum: 0.05, nesterov: 0.05, adagrad: 0.5, rmsprop: 0.05, adadelta: 1.0, adam: 0.1, adamax: 0.1, nadam: 0.1 },
    valley: { sgd: 0.2, momentum: 0.05, nesterov: 0.05, adagrad: 0.5, rmsprop: 0.05, adadelta: 1.0, adam: 0.1, adamax: 0.1, nadam: 0.1 },
    rosenbrock: { sgd: 0.001, momentum: 0.001, nesterov: 0.001, adagrad: 0.3, rmsprop: 0.01, adadelta: 1.0, adam: 0.05, adamax: 0.05, nadam: 0.05 },
    saddle: { sgd: 0.05, momentum: 0.02, nesterov: 0.02, adagrad: 0.3, rmsprop: 0.02, adadelta: 1.0, adam: 0.05, adamax: 0.05, nadam: 0.05 },
  };

  // The path of `steps` updates from `start`; each point is [x, y].
  function descend(surfaceName, optimizerName, hyper, start, steps) {
    const surface = SURFACES[surfaceName];
    const optimizer = OPTIMIZERS[optimizerName];
    const state = optimizer.init(hyper);
    const path = [start.slice()];
    let point = start.slice();
    for (let t = 1; t <= steps; t += 1) {
      point = optimizer.step(point, surface.grad(point[0], point[1]), state, hyper, t);
      path.push(point);
    }
    return path;
  }

  // ---- the tiny network of the lecture ---------------------------------------------------------
  // N1 = x1·w1 + x2·w2, N2 = x1·w3 + x2·w4, Y = f(N1)·w5 + f(N2)·w6 (no biases).
  function tinyNetwork(v, activation) {
    const f = ACTIVATIONS[activation].f;
    const n1 = v.x1 * v.w1 + v.x2 * v.w2;
    const n2 = v.x1 * v.w3 + v.x2 * v.w4;
    const a1 = f(n1);
    const a2 = f(n2);
    return { n1, n2, a1, a2, y: a1 * v.w5 + a2 * v.w6 };
  }

  window.LearnMath = Object.freeze({
    ACTIVATIONS,
    LOSSES,
    SURFACES,
    OPTIMIZERS,
    LEARNING_RATES,
    lossDomain,
    descend,
    tinyNetwork,
  });
})();
