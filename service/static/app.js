// The drawing page: pointer strokes on a canvas; its PNG goes to POST /predict while you draw.
"use strict";

(() => {
  // At most one request per THROTTLE_MS while drawing, and always one after the last stroke.
  const THROTTLE_MS = 150;
  const PREDICT_URL = "predict?return_input=true&top_k=10";
  const MODEL_URL = "v2/models/mnist";
  // the saliency map shown over the model's image: which pixels pushed the answer
  const EXPLAIN_URL = "v2/models/mnist/explain";
  const DRAWING_KEY = "mnist.drawing";

  const canvas = document.getElementById("pad");
  // a bearer token for a service started with API_TOKENS (token.js); this tab only, shared with /learn
  const { authorization, askForToken } = window.MnistToken.tokenField(
    document.getElementById("token-form"),
    document.getElementById("token"),
    () => {
      if (hasInk) schedulePrediction(); // the drawing on the pad, asked again with the token
    },
  );
  const context = canvas.getContext("2d");
  const clearButton = document.getElementById("clear");
  const digitOutput = document.getElementById("digit");
  const confidenceText = document.getElementById("confidence");
  const seenImage = document.getElementById("seen");
  const seenEmpty = document.getElementById("seen-empty");
  const barsList = document.getElementById("bars");
  const modelText = document.getElementById("model-version");
  const errorText = document.getElementById("error");
  const saliencyCanvas = document.getElementById("saliency");
  const saliencyToggle = document.getElementById("show-saliency");
  const runnerUpText = document.getElementById("runner-up");
  const answerText = document.getElementById("saliency-answer");
  let saliencyShown = false; // a map for the current answer is drawn

  let drawing = false;
  let activePointer = null; // the one pointer that draws; a second finger is ignored
  let lastPoint = null;
  let hasInk = false;
  let pendingTimer = null;
  let requestSeq = 0; // answers to older requests than the newest are dropped

  const bars = buildBars();

  function buildBars() {
    const rows = [];
    for (let digit = 0; digit < 10; digit += 1) {
      const item = document.createElement("li");
      item.className = "bar";
      item.dataset.digit = String(digit);
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = String(digit);
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      item.append(label, track, value);
      barsList.append(item);
      rows.push({ item, fill, value });
    }
    return rows;
  }

  // The lesson page (/learn) picks up the last drawing of this tab and explains it.
  function rememberDrawing(dataUrl) {
    try {
      if (dataUrl === null) sessionStorage.removeItem(DRAWING_KEY);
      else sessionStorage.setItem(DRAWING_KEY, dataUrl);
    } catch (error) {
      // storage may be disabled or full: the lesson page then starts empty
    }
  }

  function clearPad() {
    // a stroke under way ends here: its pointer draws nothing more until it is lifted
    drawing = false;
    rememberDrawing(null);
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    hasInk = false;
    requestSeq += 1;
    if (pendingTimer !== null) {
      clearTimeout(pendingTimer);
      pendingTimer = null;
    }
    showResult(null);
    showError(null);
    document.body.dataset.state = "empty";
  }

  function penWidth() {
    // about a tenth of the digit's height, like MNIST's strokes in their 20x20 box
    return canvas.width / 12;
  }

  function canvasPoint(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / box.width,
      y: ((event.clientY - box.top) * canvas.height) / box.height,
    };
  }

  function strokeTo(point) {
    context.strokeStyle = "#111111";
    context.lineWidth = penWidth();
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(lastPoint.x, lastPoint.y);
    context.lineTo(point.x, point.y);
    context.stroke();
    lastPoint = point;
    hasInk = true;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    if (activePointer !== null) return; // a second finger: no line between the two
    canvas.setPointerCapture(event.pointerId);
    // preventDefault() above also stops the click's focus; the pad takes it so Escape clears
    canvas.focus({ preventScroll: true });
    activePointer = event.pointerId;
    drawing = true;
    lastPoint = canvasPoint(event);
    strokeTo(lastPoint); // a zero-length stroke: a tap alone draws nothing in Chromium
    schedulePrediction();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!drawing || event.pointerId !== activePointer) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) strokeTo(canvasPoint(each));
    schedulePrediction();
  });

  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    canvas.addEventListener(type, (event) => {
      if (event.pointerId !== activePointer) return;
      activePointer = null;
      if (!drawing) return;
      drawing = false;
      schedulePrediction();
    });
  }

  canvas.addEventListener("keydown", (event) => {
    if (event.key === "Escape") clearPad();
  });
  clearButton.addEventListener("click", clearPad);

  function schedulePrediction() {
    // "busy" until an answer for the drawing as it is now has arrived (tests wait for "ready")
    document.body.dataset.state = "busy";
    if (pendingTimer !== null) return;
    pendingTimer = setTimeout(() => {
      pendingTimer = null;
      predict();
    }, THROTTLE_MS);
  }

  function predict() {
    if (!hasInk) return;
    const seq = ++requestSeq;
    rememberDrawing(canvas.toDataURL("image/png"));
    canvas.toBlob((blob) => {
      if (blob === null) {
        showError("The browser could not turn the drawing into a PNG.");
        return;
      }
      send(blob, seq);
    }, "image/png");
  }

  async function send(blob, seq) {
    let response;
    let body = null;
    try {
      response = await fetch(PREDICT_URL, {
        method: "POST",
        headers: { "Content-Type": "image/png", Accept: "application/json", ...authorization() },
        body: blob,
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      if (seq === requestSeq) showError(`Cannot reach the service: ${error.message}`);
      return;
    }
    if (seq !== requestSeq) return;
    if (response.status === 401) askForToken();
    if (!response.ok) {
      const message = body && body.error && (body.error.message || body.error);
      showError(message ? String(message) : `The service answered HTTP ${response.status}.`);
      return;
    }
    if (!body || !Array.isArray(body.predictions) || body.predictions.length !== 1) {
      showError("The service sent an answer this page does not understand.");
      return;
    }
    showError(null);
    showResult(body.predictions[0]);
    offerFeedback(body.request_id, body.predictions[0].digit);
    if (body.model) showModel(body.model.name, body.model.version);
    explain(blob, seq);
    // strokes drawn since this request went out will bring another answer
    document.body.dataset.state = pendingTimer === null ? "ready" : "busy";
  }

  // The saliency map comes from a second request; the prediction never waits for it.
  async function explain(blob, seq) {
    let body = null;
    try {
      const response = await fetch(EXPLAIN_URL, {
        method: "POST",
        headers: { "Content-Type": "image/png", Accept: "application/json", ...authorization() },
        body: blob,
      });
      if (!response.ok) return; // e.g. 501 for a model that is not an MLP: no map, no error
      body = await response.json();
    } catch (error) {
      return;
    }
    if (seq !== requestSeq || !body || !Array.isArray(body.explanations)) return;
    const answer = body.explanations[0];
    drawSaliency(answer.saliency);
    runnerUpText.textContent = String(answer.runner_up);
    answerText.textContent = String(answer.digit);
    saliencyShown = true;
    saliencyCanvas.hidden = !saliencyToggle.checked;
    document.body.dataset.saliency = "ready";
  }

  // Red where ink pushed towards the answer, blue towards the runner-up; transparent elsewhere,
  // so the model's image shows through. Square root: small contributions stay visible.
  function drawSaliency(values) {
    const small = document.createElement("canvas");
    small.width = 28;
    small.height = 28;
    const smallContext = small.getContext("2d");
    const image = smallContext.createImageData(28, 28);
    const scale = Math.max(...values.map(Math.abs)) || 1;
    values.forEach((value, k) => {
      const strength = Math.sqrt(Math.abs(value) / scale);
      const rgb = value >= 0 ? [239, 68, 68] : [59, 130, 246];
      image.data.set([...rgb, Math.round(235 * strength)], k * 4);
    });
    smallContext.putImageData(image, 0, 0);
    const target = saliencyCanvas.getContext("2d");
    target.imageSmoothingEnabled = false;
    target.clearRect(0, 0, saliencyCanvas.width, saliencyCanvas.height);
    target.drawImage(small, 0, 0, saliencyCanvas.width, saliencyCanvas.height);
  }

  saliencyToggle.addEventListener("change", () => {
    saliencyCanvas.hidden = !(saliencyToggle.checked && saliencyShown);
  });

  function showResult(prediction) {
    if (prediction === null) {
      document.getElementById("wrong").hidden = true;
      saliencyShown = false;
      saliencyCanvas.hidden = true;
      runnerUpText.textContent = "the runner-up";
      answerText.textContent = "the answer";
      delete document.body.dataset.saliency;
      digitOutput.textContent = "–";
      digitOutput.removeAttribute("data-digit");
      delete document.body.dataset.verdict;
      confidenceText.textContent = "";
      seenImage.hidden = true;
      seenImage.removeAttribute("src");
      seenEmpty.hidden = false;
      for (const bar of bars) setBar(bar, 0, false);
      return;
    }
    const probabilities = prediction.probabilities;
    digitOutput.dataset.digit = String(prediction.digit);
    // the reject option: say "not sure" or "no digit" rather than show a confident wrong digit
    const verdict = prediction.accepted === false ? prediction.reject_reason : "accepted";
    document.body.dataset.verdict = verdict;
    if (verdict === "not_a_digit") {
      digitOutput.textContent = "?";
      confidenceText.textContent = "that does not look like a digit";
    } else if (verdict === "low_confidence") {
      const [first, second] = probabilities
        .map((probability, digit) => [probability, digit])
        .sort((a, b) => b[0] - a[0]);
      digitOutput.textContent = "?";
      confidenceText.textContent = `not sure: ${first[1]} or ${second[1]}?`;
    } else {
      digitOutput.textContent = String(prediction.digit);
      confidenceText.textContent = `${(prediction.confidence * 100).toFixed(1)}% sure`;
    }
    bars.forEach((bar, digit) => setBar(bar, probabilities[digit], digit === prediction.digit));
    if (prediction.input_png) {
      seenImage.src = `data:image/png;base64,${prediction.input_png}`;
      seenImage.hidden = false;
      seenEmpty.hidden = true;
    }
  }

  // "Wrong? Tap the right digit": POST /feedback for the answer on screen (its request id)
  const FEEDBACK_URL = "feedback";
  const wrongBox = document.getElementById("wrong");
  const digitKeys = document.getElementById("digit-keys");
  const feedbackStatus = document.getElementById("feedback-status");
  let answeredId = null;
  const keys = [];
  for (let digit = 0; digit <= 9; digit += 1) {
    const key = document.createElement("button");
    key.type = "button";
    key.textContent = String(digit);
    key.dataset.digit = String(digit);
    key.setAttribute("aria-label", `It was a ${digit}`);
    key.addEventListener("click", () => sendFeedback(digit));
    digitKeys.appendChild(key);
    keys.push(key);
  }

  function offerFeedback(requestId, digit) {
    answeredId = typeof requestId === "string" ? requestId : null;
    wrongBox.hidden = answeredId === null;
    feedbackStatus.textContent = "";
    delete document.body.dataset.feedback;
    for (const key of keys) {
      key.disabled = false;
      key.classList.toggle("answered", Number(key.dataset.digit) === digit);
    }
  }

  async function sendFeedback(label) {
    if (answeredId === null) return;
    for (const key of keys) key.disabled = true;
    document.body.dataset.feedback = "sending";
    let message;
    try {
      const response = await fetch(FEEDBACK_URL, {
        method: "POST",
        headers: {
          "Content-Type": "application/json", Accept: "application/json", ...authorization(),
        },
        body: JSON.stringify({ request_id: answeredId, label }),
      });
      const body = await response.json().catch(() => null);
      if (response.status === 202) {
        message = `Thank you: recorded as ${label}.`;
        document.body.dataset.feedback = "sent";
      } else {
        const reason = body && body.error && body.error.message;
        message = `Not recorded: ${reason || `HTTP ${response.status}`}`;
        document.body.dataset.feedback = "failed";
        for (const key of keys) key.disabled = false;
      }
    } catch (error) {
      message = `Not recorded: ${error.message}`;
      document.body.dataset.feedback = "failed";
      for (const key of keys) key.disabled = false;
    }
    feedbackStatus.textContent = message;
  }

  function setBar(bar, probability, best) {
    const percent = Math.max(0, Math.min(1, Number(probability) || 0)) * 100;
    bar.fill.style.width = `${percent}%`;
    bar.value.textContent = formatPercent(percent);
    bar.item.classList.toggle("best", best);
    bar.item.setAttribute("aria-label", `digit ${bar.item.dataset.digit}: ${percent.toFixed(1)} percent`);
  }

  function formatPercent(percent) {
    if (percent === 0) return "0%";
    if (percent < 0.05) return "<0.1%";
    return `${percent.toFixed(percent >= 10 ? 0 : 1)}%`;
  }

  function showModel(name, version) {
    modelText.textContent = `${name} version ${version}`;
  }

  function showError(message) {
    if (message === null) {
      errorText.hidden = true;
      errorText.textContent = "";
      return;
    }
    errorText.textContent = message;
    errorText.hidden = false;
    document.body.dataset.state = "error";
  }

  async function loadModelInfo() {
    try {
      const response = await fetch(MODEL_URL, { headers: { Accept: "application/json", ...authorization() } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      const versions = (body.versions || []).map(Number).filter(Number.isFinite);
      // until a prediction names the version that answered, show the newest one offered
      if (modelText.textContent === "loading…") {
        showModel(body.name || "mnist", versions.length ? Math.max(...versions) : "?");
      }
    } catch (error) {
      if (modelText.textContent === "loading…") modelText.textContent = "unknown (not ready?)";
    }
  }

  clearPad();
  loadModelInfo();
})();
