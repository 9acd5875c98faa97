// Live preview of a text being edited: fills the placeholders as the admin types.
(function () {
  "use strict";
  var field = document.querySelector("textarea[data-preview]");
  if (!field) { return; }
  var target = document.getElementById(field.getAttribute("data-preview"));
  var names = ["employee_name", "company_name", "contact", "body"];
  function render() {
    var text = field.value;
    names.forEach(function (name) {
      text = text.split("{" + name + "}").join(field.getAttribute("data-" + name) || "");
    });
    target.textContent = text;
  }
  field.addEventListener("input", render);
}());
