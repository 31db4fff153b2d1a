// The access token both pages send, asked for only when the service answers 401 (API_TOKENS set).
// It is kept in sessionStorage for the tab, so neither page asks twice, and it is never sent to
// any other origin (the CSP allows connections to this server only).
"use strict";

(() => {
  const TOKEN_KEY = "mnist.token";

  // Wires the page's token form; `onToken()` runs after a token is entered, to ask again.
  // Returns { authorization(), askForToken() }: the headers to spread into a fetch, and the call
  // that shows the form after a 401.
  function tokenField(form, input, onToken) {
    function storedToken() {
      try {
        return sessionStorage.getItem(TOKEN_KEY) || "";
      } catch (error) {
        return input.value.trim(); // storage disabled: the field itself holds it
      }
    }

    function authorization() {
      const token = storedToken();
      return token ? { Authorization: `Bearer ${token}` } : {};
    }

    function askForToken() {
      form.hidden = false;
      document.body.dataset.token = "needed";
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      try {
        if (token) sessionStorage.setItem(TOKEN_KEY, token);
        else sessionStorage.removeItem(TOKEN_KEY);
      } catch (error) {
        // storage disabled: storedToken() reads the field
      }
      document.body.dataset.token = token ? "set" : "needed";
      onToken();
    });

    return Object.freeze({ authorization, askForToken });
  }

  window.MnistToken = Object.freeze({ tokenField });
})();
