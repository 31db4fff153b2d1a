// The lesson page: five parts, each drawn from LearnMath (learn-math.js) or, for part 5, from the
// service's explain routes. window.learnPage exposes what the page shows, for the browser tests.
"use strict";

(() => {
  const M = window.LearnMath;
  const EXPLAIN_URL = "v2/models/mnist/explain?return_input=true";
  const WEIGHTS_URL = "v2/models/mnist/explain/weights";
  const THROTTLE_MS = 150;
  const COLORS = {
    f: "#2563eb",
    df: "#c2410c",
    axis: "#9aa4b2",
    grid: "#eceef1",
    text: "#5b6470",
    positive: [220, 38, 38],
    negative: [37, 99, 235],
  };
  const OPTIMIZER_COLORS = {
    sgd: "#1b1f24", momentum: "#c2410c", nesterov: "#c2255c", adagrad: "#2f9e44",
    rmsprop: "#1971c2", adadelta: "#7048e8", adam: "#e8590c", adamax: "#0c8599", nadam: "#9c36b5",
  };

  const byId = (id) => document.getElementById(id);
  // the bearer token the drawing page or this page was given (token.js; a service with API_TOKENS)
  const { authorization, askForToken } = window.MnistToken.tokenField(byId("token-form"), byId("token"), () => {
    if (!inside.weights) loadWeights();
    if (hasInk) scheduleExplain(); // the digit on the pad, explained again with the token
  });
  const el = (tag, attrs = {}, children = []) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  };
  const fmt = (value, digits = 3) => {
    if (!Number.isFinite(value)) return String(value);
    const text = value.toFixed(digits);
    return text === `-${(0).toFixed(digits)}` ? (0).toFixed(digits) : text;
  };

  // ---- a slider with its label and value ------------------------------------------------------
  function makeSlider(box, { name, label, min, max, step, value, onInput }) {
    const id = `slider-${name}`;
    const input = el("input", { type: "range", id, min, max, step, value: String(value) });
    const output = el("output", { for: id, className: "slider-value", text: fmt(value, 2) });
    box.replaceChildren(el("label", { for: id, text: label }), input, output);
    input.addEventListener("input", () => {
      output.textContent = fmt(Number(input.value), 2);
      onInput(Number(input.value));
    });
    return input;
  }

  // ---- plotting on a canvas ---------------------------------------------------------------------
  // Sizes the canvas's backing store to its CSS size times the device pixel ratio.
  function prepareCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || Number(canvas.getAttribute("width"));
    const height = canvas.clientHeight || Number(canvas.getAttribute("height"));
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { context, width, height };
  }

  function niceStep(span) {
    const raw = span / 5;
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = raw / power;
    return (unit < 1.5 ? 1 : unit < 3.5 ? 2 : unit < 7.5 ? 5 : 10) * power;
  }

  // Plots curves [{fn, color, dashed}] over [x0, x1]; y range from the samples, clipped.
  function plot(canvas, x0, x1, curves, { yClip = [-4, 6], markX = null } = {}) {
    const { context: c, width, height } = prepareCanvas(canvas);
    const pad = { left: 34, right: 8, top: 8, bottom: 20 };
    const n = 200;
    const xs = Array.from({ length: n + 1 }, (_, i) => x0 + ((x1 - x0) * i) / n);
    const series = curves.map((curve) => xs.map((x) => curve.fn(x)));
    let lo = Infinity;
    let hi = -Infinity;
    for (const ys of series) {
      for (const y of ys) {
        if (Number.isFinite(y)) {
          lo = Math.min(lo, Math.max(y, yClip[0]));
          hi = Math.max(hi, Math.min(y, yClip[1]));
        }
      }
    }
    lo = Math.min(lo, 0);
    hi = Math.max(hi, 0);
    if (hi - lo < 1e-9) hi = lo + 1;
    const margin = (hi - lo) * 0.08;
    lo -= margin;
    hi += margin;
    const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
    const py = (y) => pad.top + ((hi - y) / (hi - lo)) * (height - pad.top - pad.bottom);
    c.clearRect(0, 0, width, height);
    c.font = "10px system-ui, sans-serif";
    c.lineWidth = 1;
    const xStep = niceStep(x1 - x0);
    const yStep = niceStep(hi - lo);
    c.fillStyle = COLORS.text;
    for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1 + 1e-9; x += xStep) {
      c.strokeStyle = Math.abs(x) < 1e-9 ? COLORS.axis : COLORS.grid;
      c.beginPath();
      c.moveTo(px(x), pad.top);
      c.lineTo(px(x), height - pad.bottom);
      c.stroke();
      c.textAlign = "center";
      c.fillText(Number(x.toFixed(6)).toString(), px(x), height - 6);
    }
    for (let y = Math.ceil(lo / yStep) * yStep; y <= hi + 1e-9; y += yStep) {
      c.strokeStyle = Math.abs(y) < 1e-9 ? COLORS.axis : COLORS.grid;
      c.beginPath();
      c.moveTo(pad.left, py(y));
      c.lineTo(width - pad.right, py(y));
      c.stroke();
      c.textAlign = "right";
      c.fillText(Number(y.toFixed(6)).toString(), pad.left - 4, py(y) + 3);
    }
    if (markX !== null) {
      c.strokeStyle = "#2f9e44";
      c.setLineDash([2, 3]);
      c.beginPath();
      c.moveTo(px(markX), pad.top);
      c.lineTo(px(markX), height - pad.bottom);
      c.stroke();
      c.setLineDash([]);
    }
    c.save();
    c.beginPath();
    c.rect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
    c.clip();
    curves.forEach((curve, index) => {
      c.strokeStyle = curve.color;
      c.lineWidth = 2;
      c.setLineDash(curve.dashed ? [5, 4] : []);
      c.beginPath();
      let open = false;
      series[index].forEach((y, i) => {
        if (!Number.isFinite(y)) {
          open = false;
          return;
        }
        const yy = Math.max(lo - (hi - lo), Math.min(hi + (hi - lo), y));
        if (open) c.lineTo(px(xs[i]), py(yy));
        else c.moveTo(px(xs[i]), py(yy));
        open = true;
      });
      c.stroke();
    });
    c.restore();
    c.setLineDash([]);
  }

  // ================================================================================================
  // 1. the tiny network
  // ================================================================================================
  const NETWORK_SLIDERS = {
    x1: { label: "x1", min: -2, max: 2, step: 0.1, value: 1.0 },
    x2: { label: "x2", min: -2, max: 2, step: 0.1, value: 0.5 },
    w1: { label: "w1 (x1 → N1)", min: -2, max: 2, step: 0.05, value: 0.5 },
    w2: { label: "w2 (x2 → N1)", min: -2, max: 2, step: 0.05, value: -0.6 },
    w3: { label: "w3 (x1 → N2)", min: -2, max: 2, step: 0.05, value: 1.5 },
    w4: { label: "w4 (x2 → N2)", min: -2, max: 2, step: 0.05, value: 0.8 },
    w5: { label: "w5 (N1 → Y)", min: -2, max: 2, step: 0.05, value: 1.2 },
    w6: { label: "w6 (N2 → Y)", min: -2, max: 2, step: 0.05, value: -0.7 },
  };
  const network = { values: {}, activation: "identity", result: null };
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs = {}, text = null) => {
    const node = document.createElementNS(svgNS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== null) node.textContent = text;
    return node;
  };
  const NODES = { x1: [60, 80], x2: [60, 220], n1: [260, 80], n2: [260, 220], y: [460, 150] };
  // [weight, from, to, where its label sits along the edge, label offset up (px)]
  const EDGES = [
    ["w1", "x1", "n1", 0.5, 10], ["w2", "x2", "n1", 0.65, 10], ["w3", "x1", "n2", 0.65, -22],
    ["w4", "x2", "n2", 0.5, -22], ["w5", "n1", "y", 0.45, 12], ["w6", "n2", "y", 0.45, -26],
  ];
  const diagram = {};

  function buildNetwork() {
    for (const box of document.querySelectorAll("#network-controls .slider")) {
      const name = box.dataset.name;
      const spec = NETWORK_SLIDERS[name];
      network.values[name] = spec.value;
      makeSlider(box, {
        name, ...spec, onInput: (value) => {
          network.values[name] = value;
          updateNetwork();
        },
      });
    }
    const select = byId("network-activation");
    for (const [name, spec] of Object.entries(M.ACTIVATIONS)) {
      select.append(el("option", { value: name, text: spec.label }));
    }
    select.value = network.activation;
    select.addEventListener("change", () => {
      network.activation = select.value;
      updateNetwork();
    });
    const root = byId("network-diagram");
    for (const [name, from, to, t, up] of EDGES) {
      const [xa, ya] = NODES[from];
      const [xb, yb] = NODES[to];
      const line = svg("line", { x1: xa, y1: ya, x2: xb, y2: yb, class: "edge" });
      const lx = xa + (xb - xa) * t;
      const ly = ya + (yb - ya) * t - up;
      const label = svg("text", { x: lx, y: ly, class: "edge-label", "text-anchor": "middle" });
      root.append(line, label);
      diagram[name] = { line, label };
    }
    for (const [name, [x, y]] of Object.entries(NODES)) {
      const group = svg("g", { class: `node node-${name[0]}` });
      const circle = svg("circle", { cx: x, cy: y, r: name === "y" ? 38 : 34 });
      const title = svg("text", { x, y: y - 8, class: "node-name", "text-anchor": "middle" },
        name.toUpperCase().replace("X", "x"));
      const value = svg("text", { x, y: y + 14, class: "node-value", "text-anchor": "middle" });
      group.append(circle, title, value);
      root.append(group);
      diagram[name] = { circle, value };
    }
    updateNetwork();
  }

  function updateNetwork() {
    const v = network.values;
    const r = M.tinyNetwork(v, network.activation);
    network.result = r;
    const show = (id, value) => {
      const node = byId(id);
      node.textContent = fmt(value, 3);
      node.dataset.value = String(value);
    };
    show("n1", r.n1);
    show("n2", r.n2);
    show("a1", r.a1);
    show("a2", r.a2);
    show("y", r.y);
    const p = (x) => (x < 0 ? `(${fmt(x, 2)})` : fmt(x, 2));
    byId("n1-formula").textContent = `${p(v.x1)}·${p(v.w1)} + ${p(v.x2)}·${p(v.w2)}`;
    byId("n2-formula").textContent = `${p(v.x1)}·${p(v.w3)} + ${p(v.x2)}·${p(v.w4)}`;
    byId("y-formula").textContent = `${p(r.a1)}·${p(v.w5)} + ${p(r.a2)}·${p(v.w6)}`;
    byId("activation-name").textContent = `with f = ${M.ACTIVATIONS[network.activation].label}`;
    for (const [name] of EDGES) {
      const w = v[name];
      const { line, label } = diagram[name];
      line.setAttribute("stroke-width", String(1 + 3 * Math.abs(w)));
      line.setAttribute("class", `edge ${w >= 0 ? "pos" : "neg"}`);
      label.textContent = `${name} = ${fmt(w, 2)}`;
    }
    diagram.x1.value.textContent = fmt(v.x1, 2);
    diagram.x2.value.textContent = fmt(v.x2, 2);
    diagram.n1.value.textContent = fmt(r.a1, 2);
    diagram.n2.value.textContent = fmt(r.a2, 2);
    diagram.y.value.textContent = fmt(r.y, 2);
  }

  // ================================================================================================
  // 2. activation functions
  // ================================================================================================
  function card(title, formula, note, label) {
    const canvas = el("canvas", { width: "260", height: "170", role: "img", "aria-label": label });
    const node = el("article", { className: "card" }, [
      el("h3", { text: title }),
      el("p", { className: "formula", text: formula }),
      canvas,
      el("p", { className: "note", text: note }),
    ]);
    return { node, canvas };
  }

  const activationCanvases = {};
  function buildActivations() {
    const box = byId("activation-plots");
    for (const [name, spec] of Object.entries(M.ACTIVATIONS)) {
      if (name === "identity") continue;
      const { node, canvas } = card(spec.label, spec.formula, spec.note,
        `${spec.label} and its derivative from −5 to 5`);
      node.dataset.activation = name;
      box.append(node);
      activationCanvases[name] = canvas;
    }
    drawActivations();
  }

  function drawActivations() {
    for (const [name, canvas] of Object.entries(activationCanvases)) {
      const spec = M.ACTIVATIONS[name];
      plot(canvas, -5, 5, [
        { fn: spec.f, color: COLORS.f },
        { fn: spec.df, color: COLORS.df, dashed: true },
      ], { yClip: [-2, 5] });
    }
  }

  // ================================================================================================
  // 3. loss functions
  // ================================================================================================
  const losses = { kind: "regression", target: { regression: 1, classification: 1 } };
  const lossCanvases = {};

  function buildLosses() {
    for (const radio of document.querySelectorAll("input[name='loss-kind']")) {
      radio.addEventListener("change", () => {
        if (radio.checked) {
          losses.kind = radio.value;
          buildLossCards();
        }
      });
    }
    buildLossCards();
  }

  function buildLossCards() {
    const regression = losses.kind === "regression";
    makeSlider(byId("loss-target-box"), {
      name: "loss-target",
      label: regression ? "Target y" : "Target t (probability of the positive class)",
      min: 0, max: regression ? 3 : 1, step: regression ? 0.1 : 0.05,
      value: losses.target[losses.kind],
      onInput: (value) => {
        losses.target[losses.kind] = value;
        drawLosses();
      },
    });
    const box = byId("loss-plots");
    box.replaceChildren();
    for (const key of Object.keys(lossCanvases)) delete lossCanvases[key];
    for (const [name, spec] of Object.entries(M.LOSSES)) {
      if (spec.kind !== losses.kind) continue;
      const axis = name.includes("hinge") ? "score s" : regression ? "prediction p" : "probability p";
      const { node, canvas } = card(spec.label, spec.formula, spec.note,
        `${spec.label} and its gradient against the ${axis}`);
      node.dataset.loss = name;
      box.append(node);
      lossCanvases[name] = canvas;
    }
    drawLosses();
  }

  function drawLosses() {
    const target = losses.target[losses.kind];
    for (const [name, canvas] of Object.entries(lossCanvases)) {
      const spec = M.LOSSES[name];
      const [x0, x1] = M.lossDomain(name, target);
      const mark = spec.kind === "regression" ? target : name.includes("hinge") ? null : target;
      plot(canvas, x0, x1, [
        { fn: (p) => spec.f(target, p), color: COLORS.f },
        { fn: (p) => spec.grad(target, p), color: COLORS.df, dashed: true },
      ], { yClip: [-6, 8], markX: mark !== null && mark >= x0 && mark <= x1 ? mark : null });
    }
  }

  // ================================================================================================
  // 4. gradient descent
  // ================================================================================================
  const MAX_STEPS = 300;
  const descent = { surface: "bowl", start: null, steps: 0, runners: {}, hyper: {}, timer: null };
  const panels = {};
  const surfaceImages = {};

  function hyperLabel(key) {
    return {
      learning_rate: "learning rate", momentum: "momentum", rho: "ρ (rho)", beta_1: "β₁",
      beta_2: "β₂", epsilon: "ε", initial_accumulator_value: "initial accumulator",
    }[key];
  }

  function buildDescent() {
    const select = byId("surface");
    for (const [name, spec] of Object.entries(M.SURFACES)) {
      select.append(el("option", { value: name, text: spec.label }));
    }
    select.addEventListener("change", () => chooseSurface(select.value));
    const box = byId("descent-panels");
    for (const [name, spec] of Object.entries(M.OPTIMIZERS)) {
      descent.hyper[name] = { ...spec.hyper };
      const canvas = el("canvas", {
        width: "240", height: "240", tabindex: "0", role: "img",
        "aria-label": `${spec.label}: the path on the surface. Click to set the start; arrow keys move it.`,
      });
      const fields = el("div", { className: "hyper" });
      for (const key of Object.keys(spec.hyper)) {
        const id = `${name}-${key}`;
        const input = el("input", { id, type: "number", step: "any", value: String(spec.hyper[key]) });
        input.addEventListener("change", () => {
          const value = readNumber(input);
          if (value === null) {
            // empty, not a number or out of range (1e400): keep the value in use, and show it
            input.value = String(descent.hyper[name][key]);
            return;
          }
          descent.hyper[name][key] = value;
          resetDescent();
        });
        fields.append(el("label", { for: id, text: hyperLabel(key) }), input);
      }
      const status = el("p", { className: "panel-status" });
      const node = el("article", { className: "panel", "data-optimizer": name }, [
        el("h3", {}, [el("span", { className: "dot" }), spec.label]),
        canvas,
        status,
        el("details", {}, [el("summary", { text: "hyperparameters" }), fields]),
      ]);
      node.querySelector(".dot").style.background = OPTIMIZER_COLORS[name];
      box.append(node);
      panels[name] = { canvas, status, node };
      // a click or a tap sets the start; a finger dragging over the maps still scrolls the page
      canvas.addEventListener("click", (event) => {
        const box = canvas.getBoundingClientRect();
        const [x0, x1, y0, y1] = M.SURFACES[descent.surface].view;
        const x = x0 + ((event.clientX - box.left) / box.width) * (x1 - x0);
        const y = y1 - ((event.clientY - box.top) / box.height) * (y1 - y0);
        setStart([Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
      });
      canvas.addEventListener("keydown", (event) => {
        const moves = { ArrowLeft: [-0.1, 0], ArrowRight: [0.1, 0], ArrowUp: [0, 0.1], ArrowDown: [0, -0.1] };
        const move = moves[event.key];
        if (!move) return;
        event.preventDefault();
        const [x, y] = descent.start;
        // kept on the map, as a click is
        const [x0, x1, y0, y1] = M.SURFACES[descent.surface].view;
        const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, Math.round(v * 100) / 100));
        setStart([clamp(x + move[0], x0, x1), clamp(y + move[1], y0, y1)]);
      });
    }
    for (const [id, index] of [["start-x", 0], ["start-y", 1]]) {
      byId(id).addEventListener("change", () => {
        const value = readNumber(byId(id));
        if (value === null) {
          byId(id).value = String(descent.start[index]);
          return;
        }
        const start = descent.start.slice();
        start[index] = value;
        setStart(start);
      });
    }
    byId("descent-run").addEventListener("click", () => (descent.timer ? stopRun() : startRun()));
    byId("descent-step").addEventListener("click", () => {
      stopRun();
      stepDescent(1);
    });
    byId("descent-reset").addEventListener("click", () => {
      stopRun();
      resetDescent();
    });
    chooseSurface("bowl");
  }

  // A number field's value, or null when it is empty or not a finite number: Number("") is 0,
  // and an out-of-range entry (1e400) reads as "" or Infinity.
  function readNumber(input) {
    const text = input.value.trim();
    const value = text === "" ? NaN : Number(text);
    return Number.isFinite(value) ? value : null;
  }

  function chooseSurface(name) {
    stopRun();
    descent.surface = name;
    byId("surface").value = name;
    byId("surface-formula").textContent = M.SURFACES[name].formula;
    for (const [optimizer, rates] of Object.entries(M.LEARNING_RATES[name])) {
      descent.hyper[optimizer].learning_rate = rates;
      const input = byId(`${optimizer}-learning_rate`);
      if (input) input.value = String(rates);
    }
    setStart(M.SURFACES[name].start.slice());
  }

  function setStart(point) {
    descent.start = point;
    byId("start-x").value = String(point[0]);
    byId("start-y").value = String(point[1]);
    resetDescent();
  }

  function resetDescent() {
    descent.steps = 0;
    for (const [name, spec] of Object.entries(M.OPTIMIZERS)) {
      const hyper = { ...descent.hyper[name] };
      descent.runners[name] = {
        hyper, state: spec.init(hyper), point: descent.start.slice(),
        path: [descent.start.slice()], diverged: false,
      };
    }
    drawDescent();
  }

  function stepDescent(count) {
    const surface = M.SURFACES[descent.surface];
    for (let k = 0; k < count && descent.steps < MAX_STEPS; k += 1) {
      descent.steps += 1;
      const t = descent.steps;
      for (const [name, runner] of Object.entries(descent.runners)) {
        if (runner.diverged) continue;
        const g = surface.grad(runner.point[0], runner.point[1]);
        const next = M.OPTIMIZERS[name].step(runner.point, g, runner.state, runner.hyper, t);
        runner.point = next;
        runner.path.push(next);
        if (!next.every(Number.isFinite) || Math.abs(next[0]) > 1e6 || Math.abs(next[1]) > 1e6) {
          runner.diverged = true;
        }
      }
    }
    drawDescent();
  }

  function startRun() {
    byId("descent-run").textContent = "Pause";
    descent.timer = setInterval(() => {
      stepDescent(1);
      if (descent.steps >= MAX_STEPS) stopRun();
    }, 50);
  }

  function stopRun() {
    if (descent.timer) clearInterval(descent.timer);
    descent.timer = null;
    byId("descent-run").textContent = "Run";
  }

  // The surface as a picture, once per surface and size: log-scaled height, contour bands.
  function surfaceImage(name, size) {
    const key = `${name}@${size}`;
    if (surfaceImages[key]) return surfaceImages[key];
    const spec = M.SURFACES[name];
    const [x0, x1, y0, y1] = spec.view;
    const canvas = document.createElement("canvas");
    canvas.width = size;
    canvas.height = size;
    const context = canvas.getContext("2d");
    const image = context.createImageData(size, size);
    const values = new Float64Array(size * size);
    let lo = Infinity;
    let hi = -Infinity;
    for (let j = 0; j < size; j += 1) {
      for (let i = 0; i < size; i += 1) {
        const x = x0 + ((i + 0.5) / size) * (x1 - x0);
        const y = y1 - ((j + 0.5) / size) * (y1 - y0);
        const v = spec.f(x, y);
        values[j * size + i] = v;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    const scale = Math.log1p(hi - lo);
    for (let k = 0; k < values.length; k += 1) {
      const level = Math.log1p(values[k] - lo) / scale; // 0 at the lowest point, 1 at the highest
      const band = (level * 14) % 1 < 0.1 ? 0.86 : 1;
      // from pale teal (low) to warm sand (high)
      const r = (216 + (250 - 216) * level) * band;
      const g = (240 + (226 - 240) * level) * band;
      const b = (236 + (190 - 236) * level) * band;
      image.data.set([r, g, b, 255], k * 4);
    }
    context.putImageData(image, 0, 0);
    surfaceImages[key] = canvas;
    return canvas;
  }

  function drawDescent() {
    const surface = M.SURFACES[descent.surface];
    const [x0, x1, y0, y1] = surface.view;
    byId("descent-steps").textContent = String(descent.steps);
    byId("descent-steps").dataset.value = String(descent.steps);
    for (const [name, runner] of Object.entries(descent.runners)) {
      const { canvas, status } = panels[name];
      const { context: c, width, height } = prepareCanvas(canvas);
      const px = (x) => ((x - x0) / (x1 - x0)) * width;
      const py = (y) => ((y1 - y) / (y1 - y0)) * height;
      c.drawImage(surfaceImage(descent.surface, 320), 0, 0, width, height);
      // the minimum
      c.strokeStyle = "#1b1f24";
      c.lineWidth = 1.5;
      const [mx, my] = surface.minimum;
      c.beginPath();
      c.moveTo(px(mx) - 5, py(my));
      c.lineTo(px(mx) + 5, py(my));
      c.moveTo(px(mx), py(my) - 5);
      c.lineTo(px(mx), py(my) + 5);
      c.stroke();
      // the path
      c.strokeStyle = OPTIMIZER_COLORS[name];
      c.lineWidth = 2;
      c.lineJoin = "round";
      c.beginPath();
      runner.path.forEach(([x, y], i) => {
        if (!Number.isFinite(x) || !Number.isFinite(y)) return;
        const X = Math.max(-1e4, Math.min(1e4, px(x)));
        const Y = Math.max(-1e4, Math.min(1e4, py(y)));
        if (i === 0) c.moveTo(X, Y);
        else c.lineTo(X, Y);
      });
      c.stroke();
      c.fillStyle = OPTIMIZER_COLORS[name];
      for (const [x, y] of runner.path.slice(-1)) {
        c.beginPath();
        c.arc(px(x), py(y), 4, 0, 2 * Math.PI);
        c.fill();
      }
      c.strokeStyle = "#ffffff";
      c.fillStyle = "#1b1f24";
      c.beginPath();
      c.arc(px(descent.start[0]), py(descent.start[1]), 4, 0, 2 * Math.PI);
      c.fill();
      c.stroke();
      const [x, y] = runner.point;
      const loss = surface.f(x, y);
      status.textContent = runner.diverged
        ? `diverged after ${runner.path.length - 1} steps`
        : `loss ${fmt(loss, 4)} at (${fmt(x, 2)}, ${fmt(y, 2)})`;
      status.dataset.loss = String(loss);
    }
  }

  // ================================================================================================
  // 5. inside the served model
  // ================================================================================================
  const inside = { weights: null, explanation: null, model: null, seq: 0, timer: null, selected: 0 };
  const pad = byId("learn-pad");
  const padContext = pad.getContext("2d");
  let drawing = false;
  let activePointer = null; // the one pointer that draws; a second finger is ignored
  let lastPoint = null;
  let hasInk = false;

  function clearPad() {
    // a stroke under way ends here: its pointer draws nothing more until it is lifted
    drawing = false;
    padContext.fillStyle = "#ffffff";
    padContext.fillRect(0, 0, pad.width, pad.height);
    hasInk = false;
    inside.seq += 1;
    inside.explanation = null;
    showExplanation();
    document.body.dataset.explain = "empty";
  }

  function padPoint(event) {
    const box = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * pad.width) / box.width,
      y: ((event.clientY - box.top) * pad.height) / box.height,
    };
  }

  function strokeTo(point) {
    padContext.strokeStyle = "#111111";
    padContext.lineWidth = pad.width / 12;
    padContext.lineCap = "round";
    padContext.lineJoin = "round";
    padContext.beginPath();
    padContext.moveTo(lastPoint.x, lastPoint.y);
    padContext.lineTo(point.x, point.y);
    padContext.stroke();
    lastPoint = point;
    hasInk = true;
  }

  function buildInside() {
    pad.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      if (activePointer !== null) return; // a second finger: no line between the two
      pad.setPointerCapture(event.pointerId);
      // preventDefault() above also stops the click's focus; the pad takes it so Escape clears
      pad.focus({ preventScroll: true });
      activePointer = event.pointerId;
      drawing = true;
      lastPoint = padPoint(event);
      strokeTo(lastPoint);
      scheduleExplain();
    });
    pad.addEventListener("pointermove", (event) => {
      if (!drawing || event.pointerId !== activePointer) return;
      strokeTo(padPoint(event));
      scheduleExplain();
    });
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      pad.addEventListener(type, (event) => {
        if (event.pointerId !== activePointer) return;
        activePointer = null;
        if (!drawing) return;
        drawing = false;
        scheduleExplain();
      });
    }
    pad.addEventListener("keydown", (event) => {
      if (event.key === "Escape") clearPad();
    });
    byId("learn-clear").addEventListener("click", clearPad);
    byId("learn-sample").addEventListener("click", drawSample);
    byId("order-by-activation").addEventListener("change", drawWeights);
    const grid = byId("weights-grid");
    grid.addEventListener("pointerdown", (event) => {
      const layout = weightsLayout();
      if (!layout) return;
      const box = grid.getBoundingClientRect();
      const col = Math.floor(((event.clientX - box.left) / box.width) * layout.cols);
      const row = Math.floor(((event.clientY - box.top) / box.height) * layout.rows);
      const slot = row * layout.cols + col;
      if (slot >= 0 && slot < layout.order.length) selectUnit(layout.order[slot]);
    });
    grid.addEventListener("keydown", (event) => {
      const layout = weightsLayout();
      if (!layout) return;
      const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -layout.cols, ArrowDown: layout.cols };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const slot = layout.order.indexOf(inside.selected) + moves[event.key];
      if (slot >= 0 && slot < layout.order.length) selectUnit(layout.order[slot]);
    });
    clearPad();
    loadWeights();
    loadDrawing();
  }

  // The last drawing made on the drawing page in this tab, if any, is explained first.
  function loadDrawing() {
    let dataUrl = null;
    try {
      dataUrl = sessionStorage.getItem("mnist.drawing");
    } catch (error) {
      return;
    }
    if (!dataUrl || !dataUrl.startsWith("data:image/png;base64,")) return;
    const image = new Image();
    image.onload = () => {
      if (hasInk) return; // the visitor started drawing meanwhile
      padContext.drawImage(image, 0, 0, pad.width, pad.height);
      hasInk = true;
      scheduleExplain();
    };
    image.src = dataUrl;
  }

  // A "3" in two strokes, in fractions of the pad.
  function drawSample() {
    clearPad();
    const arc = (cx, cy, rx, ry, a0, a1) => Array.from({ length: 24 }, (_, i) => {
      const a = ((a0 + ((a1 - a0) * i) / 23) * Math.PI) / 180;
      return { x: (cx + rx * Math.cos(a)) * pad.width, y: (cy + ry * Math.sin(a)) * pad.height };
    });
    for (const stroke of [arc(0.48, 0.31, 0.2, 0.15, 210, 450), arc(0.48, 0.64, 0.22, 0.19, -90, 150)]) {
      lastPoint = stroke[0];
      for (const point of stroke) strokeTo(point);
    }
    scheduleExplain();
  }

  function scheduleExplain() {
    document.body.dataset.explain = "busy";
    if (inside.timer !== null) return;
    inside.timer = setTimeout(() => {
      inside.timer = null;
      requestExplanation();
    }, THROTTLE_MS);
  }

  function requestExplanation() {
    if (!hasInk) return;
    const seq = ++inside.seq;
    pad.toBlob(async (blob) => {
      if (blob === null) return;
      try {
        const response = await fetch(EXPLAIN_URL, {
          method: "POST",
          headers: { "Content-Type": "image/png", Accept: "application/json", ...authorization() },
          body: blob,
        });
        const body = await response.json().catch(() => null);
        if (seq !== inside.seq) return;
        if (response.status === 401) askForToken();
        if (!response.ok) {
          const message = body && body.error && (body.error.message || body.error);
          showStatus(message ? String(message) : `The service answered HTTP ${response.status}.`);
          document.body.dataset.explain = "error";
          return;
        }
        // another model answered than the one whose weights are shown (promoted, rolled back,
        // or the weights could not be loaded before): load its weights first
        if (!sameModel(body.model)) {
          await loadWeights();
          if (seq !== inside.seq) return;
        }
        inside.explanation = body;
        // show the unit that fires most for this digit
        const hidden = body.explanations[0].hidden[0];
        inside.selected = hidden.indexOf(Math.max(...hidden));
        showExplanation();
        document.body.dataset.explain = inside.timer === null ? "ready" : "busy";
      } catch (error) {
        if (seq === inside.seq) showStatus(`Cannot reach the service: ${error.message}`);
      }
    }, "image/png");
  }

  function showStatus(text) {
    byId("explain-status").textContent = text;
  }

  // Diverging colours: red for positive, blue for negative, white at 0; v in [-1, 1].
  function diverging(v) {
    const base = v >= 0 ? COLORS.positive : COLORS.negative;
    const a = Math.min(1, Math.abs(v));
    return base.map((c) => Math.round(255 + (c - 255) * a));
  }

  function drawMap(canvas, values, { grey = null } = {}) {
    const small = document.createElement("canvas");
    small.width = 28;
    small.height = 28;
    const context = small.getContext("2d");
    const image = context.createImageData(28, 28);
    let scale = 0;
    if (values) for (const v of values) scale = Math.max(scale, Math.abs(v));
    for (let k = 0; k < 784; k += 1) {
      let rgb;
      if (values) {
        // square root: small contributions stay visible next to the largest
        const v = scale > 0 ? values[k] / scale : 0;
        rgb = diverging(Math.sign(v) * Math.sqrt(Math.abs(v)));
        if (grey) {
          // the ink shows through faintly, so the map can be read against the digit
          const ink = grey[k] / 255;
          rgb = rgb.map((c) => Math.round(c * (1 - 0.25 * ink)));
        }
      } else {
        const g = grey ? grey[k] : 0;
        rgb = [g, g, g];
      }
      image.data.set([...rgb, 255], k * 4);
    }
    context.putImageData(image, 0, 0);
    const c = canvas.getContext("2d");
    c.imageSmoothingEnabled = false;
    c.clearRect(0, 0, canvas.width, canvas.height);
    c.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  function showExplanation() {
    const body = inside.explanation;
    const digit = byId("explain-digit");
    if (!body) {
      digit.textContent = "–";
      byId("explain-runner").textContent = "–";
      byId("explain-confidence").textContent = "";
      byId("towards-answer").textContent = "the answer";
      byId("towards-runner").textContent = "the runner-up";
      drawMap(byId("seen-map"), null);
      drawMap(byId("saliency-map"), null, { grey: null });
      showStatus("Draw a digit to see its explanation.");
      drawWeights();
      return;
    }
    const answer = body.explanations[0];
    digit.textContent = String(answer.digit);
    byId("explain-runner").textContent = String(answer.runner_up);
    byId("towards-answer").textContent = `a ${answer.digit}`;
    byId("towards-runner").textContent = `a ${answer.runner_up}`;
    byId("explain-confidence").textContent = `(${(answer.confidence * 100).toFixed(1)}% sure)`;
    const image = new Image();
    image.onload = () => {
      const grey = readPixels(image);
      drawMap(byId("seen-map"), null, { grey });
      drawMap(byId("saliency-map"), answer.saliency, { grey });
    };
    image.src = `data:image/png;base64,${answer.input_png}`;
    const hidden = answer.hidden[0];
    const active = hidden.filter((a) => a > 1e-9).length;
    showStatus(`Model version ${body.model.version}: ${active} of ${hidden.length} hidden units are active for this digit.`);
    drawWeights();
  }

  function readPixels(image) {
    const canvas = document.createElement("canvas");
    canvas.width = 28;
    canvas.height = 28;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const data = context.getImageData(0, 0, 28, 28).data;
    return Array.from({ length: 784 }, (_, k) => data[k * 4]);
  }

  function sameModel(model) {
    return Boolean(inside.weights && inside.model && model && model.name === inside.model.name &&
      Number(model.version) === Number(inside.model.version));
  }

  async function loadWeights() {
    try {
      const response = await fetch(WEIGHTS_URL, { headers: { Accept: "application/json", ...authorization() } });
      if (response.status === 401) askForToken();
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message || body.error : `HTTP ${response.status}`);
      const raw = atob(body.weights);
      const q = new Int8Array(raw.length);
      for (let k = 0; k < raw.length; k += 1) q[k] = (raw.charCodeAt(k) << 24) >> 24;
      inside.weights = { units: body.units, q, scales: body.scales, biases: body.biases };
      inside.model = body.model;
      const m = body.model;
      byId("inside-model").textContent =
        `${m.name} version ${m.version}, 784 → ${m.hidden_layers.join(" → ")} → 10 with ${m.activation}`;
      drawWeights();
    } catch (error) {
      inside.weights = null;
      inside.model = null;
      byId("inside-model").textContent = `unavailable (${error.message})`;
      drawWeights();
    }
  }

  // The drawn digit's hidden activations, if they come from the model whose weights are shown.
  function activations() {
    const body = inside.explanation;
    if (!body || !inside.weights || !sameModel(body.model)) return null;
    const hidden = body.explanations[0].hidden[0];
    return hidden.length === inside.weights.units ? hidden : null;
  }

  function weightsLayout() {
    const w = inside.weights;
    if (!w) return null;
    const cols = Math.ceil(Math.sqrt(w.units));
    const rows = Math.ceil(w.units / cols);
    let order = Array.from({ length: w.units }, (_, k) => k);
    const hidden = activations();
    if (hidden && byId("order-by-activation").checked) {
      order = order.sort((a, b) => hidden[b] - hidden[a] || a - b);
    }
    return { cols, rows, order, hidden };
  }

  function drawWeights() {
    const grid = byId("weights-grid");
    const layout = weightsLayout();
    if (!layout) {
      grid.getContext("2d").clearRect(0, 0, grid.width, grid.height);
      const unitMap = byId("unit-map");
      unitMap.getContext("2d").clearRect(0, 0, unitMap.width, unitMap.height);
      byId("unit-info").textContent = "";
      return;
    }
    const w = inside.weights;
    const tile = 28;
    const gap = 6;
    const cell = tile + gap;
    grid.width = layout.cols * cell;
    grid.height = layout.rows * cell;
    const c = grid.getContext("2d");
    c.fillStyle = "#ffffff";
    c.fillRect(0, 0, grid.width, grid.height);
    const image = c.createImageData(tile, tile);
    let top = 0;
    if (layout.hidden) for (const a of layout.hidden) top = Math.max(top, a);
    layout.order.forEach((unit, slot) => {
      const x = (slot % layout.cols) * cell + gap / 2;
      const y = Math.floor(slot / layout.cols) * cell + 1;
      for (let k = 0; k < 784; k += 1) {
        image.data.set([...diverging(w.q[unit * 784 + k] / 127), 255], k * 4);
      }
      c.putImageData(image, x, y);
      if (layout.hidden) {
        const share = top > 0 ? Math.max(0, layout.hidden[unit]) / top : 0;
        c.fillStyle = "#e5e7eb";
        c.fillRect(x, y + tile + 1, tile, 3);
        c.fillStyle = "#2f9e44";
        c.fillRect(x, y + tile + 1, tile * share, 3);
      }
      if (unit === inside.selected) {
        c.strokeStyle = "#1b1f24";
        c.lineWidth = 1;
        c.strokeRect(x - 1.5, y - 0.5, tile + 3, tile + 5);
      }
    });
    describeUnit();
  }

  function selectUnit(unit) {
    inside.selected = unit;
    drawWeights();
  }

  function describeUnit() {
    const w = inside.weights;
    if (!w) return;
    if (!(inside.selected >= 0 && inside.selected < w.units)) inside.selected = 0;
    const unit = inside.selected;
    const weights = Array.from({ length: 784 }, (_, k) => w.q[unit * 784 + k]);
    drawMap(byId("unit-map"), weights);
    let text = `Unit ${unit}: bias ${fmt(w.biases[unit], 3)}, largest weight ${fmt(127 * w.scales[unit], 3)}`;
    const hidden = activations();
    if (hidden) {
      const rank = hidden.filter((a) => a > hidden[unit]).length + 1;
      text += `; activation ${fmt(hidden[unit], 3)} for the drawn digit (rank ${rank} of ${hidden.length})`;
    }
    byId("unit-info").textContent = `${text}. Click a tile or use the arrow keys on the grid to pick another.`;
  }

  // ---- what the tests read ----------------------------------------------------------------------
  window.learnPage = Object.freeze({
    network: () => ({ values: { ...network.values }, activation: network.activation, ...network.result }),
    descent: () => ({
      surface: descent.surface,
      start: descent.start.slice(),
      steps: descent.steps,
      hyper: Object.fromEntries(Object.entries(descent.runners).map(([k, r]) => [k, { ...r.hyper }])),
      paths: Object.fromEntries(Object.entries(descent.runners).map(([k, r]) => [k, r.path.map((p) => p.slice())])),
    }),
    losses: () => ({ kind: losses.kind, target: losses.target[losses.kind], shown: Object.keys(lossCanvases) }),
    explanation: () => inside.explanation,
    weights: () => (inside.weights
      ? { units: inside.weights.units, scales: inside.weights.scales.slice(), model: { ...inside.model } }
      : null),
  });

  buildNetwork();
  buildActivations();
  buildLosses();
  buildDescent();
  buildInside();
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      drawActivations();
      drawLosses();
      drawDescent();
    }, 100);
  });
  document.body.dataset.ready = "true";
})();
