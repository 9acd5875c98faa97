"""Portal forms (Flask-WTF: every POST form carries a CSRF token)."""

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Optional

MODE_CHOICES = [
    SelectChoice("", "Follow the organisation default"),
    SelectChoice("consent", "Opt-In with Consent"),
    SelectChoice("disclaimer", "Opt-In Disclaimer Only"),
    SelectChoice("off", "Off (relay only; STOP still honoured)"),
]
OPT_OUT_METHODS = [
    SelectChoice("phone call", "Phone call"),
    SelectChoice("email", "Email"),
    SelectChoice("in person", "In person"),
    SelectChoice("letter", "Letter"),
    SelectChoice("other", "Other"),
]


class ActionForm(FlaskForm):
    """A button that changes something: only the CSRF token."""


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired()])
    new = PasswordField("New password", validators=[DataRequired(), Length(min=12, max=1024)])
    confirm = PasswordField(
        "New password again", validators=[DataRequired(), EqualTo("new", "The passwords differ.")]
    )


class EmployeeForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    cell = StringField("Own cell phone", validators=[DataRequired(), Length(max=40)])
    line = StringField("Line (Twilio number)", validators=[DataRequired(), Length(max=40)])
    mode = SelectField("Opt-in mode", choices=MODE_CHOICES, validate_choice=True)


class OrganisationForm(FlaskForm):
    company_name = StringField("Company name", validators=[Length(max=200)])
    default_mode = SelectField("Default opt-in mode", choices=MODE_CHOICES[1:])


class TextForm(FlaskForm):
    value = TextAreaField("Text", validators=[DataRequired(), Length(max=1600)])


class ContactNameForm(FlaskForm):
    name = StringField("Display name", validators=[Optional(), Length(max=200)])


class OptOutForm(FlaskForm):
    method = SelectField("How the opt-out was received", choices=OPT_OUT_METHODS)
    note = TextAreaField("Note (what the contact said, who took it)", validators=[Length(max=2000)])


class DismissForm(FlaskForm):
    reason = TextAreaField(
        "Why this is not an opt-out", validators=[DataRequired(), Length(max=2000)]
    )


class SimulatorForm(FlaskForm):
    body = TextAreaField("Text", validators=[Length(max=1600)])
    media_url = StringField("Picture URL (optional)", validators=[Optional(), Length(max=500)])
