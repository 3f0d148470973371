/* global document, location */
// The token goes in a JSON body with the page's header; the server answers with a session cookie.
const form = document.getElementById('login-form');
const error = document.getElementById('login-error');
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.hidden = true;
  const token = document.getElementById('token').value;
  try {
    const res = await fetch('/api/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-fromage-csrf': '1' },
      body: JSON.stringify({ token }),
    });
    if (res.ok) {
      location.assign('/');
      return;
    }
    const body = await res.json().catch(() => ({}));
    error.textContent = body.error ?? `Sign-in failed (HTTP ${res.status}).`;
  } catch (err) {
    error.textContent = `The server could not be reached (${err.message}).`;
  }
  error.hidden = false;
});
